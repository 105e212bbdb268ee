"""The parts of ``textinv toy train`` (see ``textinv.toy.train``, the module to import from).

``config`` (the run's settings, torch-free, for the command line), ``components`` (the model's
architecture at toy size), ``state`` (what a run holds, its data set and its clock), ``vae_stage``
and ``unet_stage`` (the two training stages), and ``saving`` (checkpoints and the diffusers folder).
"""
