"""MLflow model registry side of the pipeline (step 4b, ``register``).

* :mod:`fashion_attr.registry.pyfunc`: the served model (an MLflow ``pyfunc``
  that takes base64 JPEG/PNG images and answers category + attributes per group),
  and :func:`~fashion_attr.registry.pyfunc.log_pyfunc_model` to log it.
* :mod:`fashion_attr.registry.gate`: the promotion gate, a pure function of the
  challenger's and the champion's metrics.
* :mod:`fashion_attr.registry.mlflow_registry`: registration, aliases
  (``champion``/``challenger``) and the gate applied against a live registry.

The submodules are imported on demand so that the serving process, which loads
only :mod:`~fashion_attr.registry.pyfunc`, does not import the registry client code.
"""
