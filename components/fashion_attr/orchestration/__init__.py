"""How a pipeline step runs: checked first, then in this process, under torchrun or as a job.

- :mod:`~fashion_attr.orchestration.preflight`: every input of a pipeline run checked in
  seconds, before any work (the DAG's ``validation`` task, ``run_local`` and its own CLI);
- :mod:`~fashion_attr.orchestration.executor`: a training step in this process, under
  ``torchrun`` over this node's GPUs, or as a cluster job (:mod:`fashion_attr.cluster`);
  one failure record per task attempt;
- :mod:`~fashion_attr.orchestration.kfp_adapter`: KFP parameters and artifacts in, step
  configs and results out (the KFP components of ``pipelines/components.py`` call it);
- :mod:`~fashion_attr.orchestration.params`: the pipeline's parameter strings.

It sits above the steps (:mod:`fashion_attr.steps`) and never imports kfp.
"""
