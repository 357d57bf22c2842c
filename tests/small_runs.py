"""The smallest step configurations the training tests share (``--set`` overrides).

One place, so that the GAN used by the classifier, preemption and DDP tests is the
same network everywhere, and a change of a preset field is made once.
"""

from __future__ import annotations

#: A 16 px MR-GAN pyramid (4, 8, 16), 8 channels at the top, DC on; its sample quality
#: measured with a feature classifier of 20 steps (the figure is checked, not its value).
GAN_NET = [
    "image_size=16",
    "base_size=4",
    "z_dim=16",
    "top_channels=8",
    "max_channels=32",
    "dc_weight=1.0",  # not the presets' 0: the tests exercise the DC loss
    "quality.feature_steps=20",
]

#: 2 epochs of 8 steps on the demo version; checkpoints at steps 3, 6, 9, 12, 15 and at
#: each epoch end.
GAN_SMALL = ["epochs=2", "batch_size=8", *GAN_NET, "checkpoint_every=3", "num_workers=0"]

#: Two steps: just a generator.pt for the classifier's Deact.
GAN_QUICK = ["epochs=1", "max_steps=2", "batch_size=8", *GAN_NET]

#: 2 epochs of 8 steps; checkpoints at steps 3, 6, 9, 12, 15 and each epoch end.
CLF_SMALL = [
    "epochs=2",
    "batch_size=8",
    "image_size=16",
    "checkpoint_every=3",
    "deact.every=2",
    "num_workers=0",
    "lr_milestones=[1]",
    "export=last",
]


def run_gan(data: str, out: object, overrides: list[str], preset: str = "tiny", **kw: object):
    """``train_gan.run`` with the config resolved as the CLI resolves it."""
    from fashion_attr.config import GanConfig, load_config
    from fashion_attr.steps import train_gan

    cfg = load_config(GanConfig, preset=preset, overrides=overrides)
    return train_gan.run(cfg, data, str(out), **kw)


def run_classifier(
    data: str, out: object, overrides: list[str], preset: str = "tiny", **kw: object
):
    """``train_classifier.run`` with the config resolved as the CLI resolves it."""
    from fashion_attr.config import ClassifierConfig, load_config
    from fashion_attr.steps import train_classifier

    cfg = load_config(ClassifierConfig, preset=preset, overrides=overrides)
    return train_classifier.run(cfg, data, str(out), **kw)


def run_evaluate(
    model: str, data: str, out: object, overrides: list[str] = (), preset: str = "tiny", **kw
):
    """``evaluate.run`` with the config resolved as the CLI resolves it."""
    from fashion_attr.config import EvaluateConfig, load_config
    from fashion_attr.steps import evaluate

    cfg = load_config(EvaluateConfig, preset=preset, overrides=list(overrides))
    return evaluate.run(cfg, model, data, str(out), **kw)
