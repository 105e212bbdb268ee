"""``textinv bench ...``: each benchmark prints our figure next to a baseline measured in the same
run, as a ratio. Entry points, thin over the libraries they measure:

- ``invert`` (``invert_worker``, ``invert_reference``): our trainer against diffusers' example;
- ``export``: ONNX export and graph optimization, per component;
- ``generate`` (``generate_runners``, ``generate_concepts``): each backend against diffusers;
- ``concepts``: a Generate's host-side cost with 10,000 registered concepts against 10;
- ``serve``: the gRPC server under concurrent clients, against in-process calls;
- ``report`` (``report_machine``, ``report_markdown``, ``plots``): the three as one report.
"""
