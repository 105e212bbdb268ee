"""The parts of ``textinv toy eval`` (see ``textinv.toy.evaluate``, the module to import from).

``config`` (the settings, torch-free, for the command line), ``edits`` (the prompts that change
one thing), ``generation`` (images through diffusers' own pipeline), ``scoring`` (the
classifier's exact measures and the three rows), ``similarity`` (CLIP and DINO, for real models)
and ``report`` (the rows, the table and the image grid).
"""
