"""The pipeline steps, each one module with one way in, and how they are run.

Steps (each ``run(config, ...) -> <Step>Result`` and ``main(argv) -> int``, see
:mod:`~fashion_attr.steps.contract`): :mod:`~fashion_attr.steps.preprocess`,
:mod:`~fashion_attr.steps.train_gan`, :mod:`~fashion_attr.steps.train_classifier`,
:mod:`~fashion_attr.steps.evaluate`, :mod:`~fashion_attr.steps.register`.

Running them: :mod:`~fashion_attr.steps.executor` runs a training step in this
process, under ``torchrun`` or as a cluster job;
:mod:`~fashion_attr.steps.kfp_adapter` maps KFP parameters and artifacts onto the
steps (the KFP components in ``pipelines/components.py`` call it);
:mod:`~fashion_attr.steps.pipeline_params` reads the pipeline's parameter strings.
Nothing here imports kfp.
"""
