"""``textinv bench ...``: each benchmark prints our figure next to a baseline measured in the same
run, as a ratio. Entry points, thin over the libraries they measure:

- ``invert`` (``invert_worker``, ``invert_reference``): our trainer against diffusers' example,
  in fp32 and, where ``auto`` picks bf16, in bf16 too;
- ``export``: ONNX export and graph optimization, per component;
- ``generate`` (``generate_setup``, ``generate_runners``, ``generate_checks``,
  ``generate_concepts``, ``generate_table``): each backend against diffusers (in fp32 and in ours'
  precision) and, with ``--optimum``, optimum's ORT pipeline (``optimum_peer``, whose
  ``optimum_worker`` runs in a venv of its own);
- ``concepts``: a Generate's host-side cost with 10,000 registered concepts against 10;
- ``store`` (``store_replicas``, ``store_scaling``, ``store_print``): PostgreSQL: a concept's
  propagation between replicas, host-side cost at 100,000 concepts against 10, and three replicas
  against one;
- ``serve`` (``serve_load``, ``serve_print``, ``serve_plot``): the gRPC server under closed-loop
  concurrency and open-loop Poisson arrivals, against in-process calls, or a running server;
- ``time-to-concept`` (``fidelity``, ``time_to_concept_plot``): on the embedded shapes world, each
  recipe's fidelity against training time, read through the torch backend with standard errors,
  and the time until the learned word works as well as the best caption, against diffusers'
  README recipe;
- ``report`` (``report_machine``, ``report_peak``, ``report_startup``, ``report_markdown``,
  ``plots``): the three as one report, with the machine's measured GEMM peak and the time to the
  first image.
"""
