"""The smallest step configurations the training tests share (``--set`` overrides).

One place, so that the GAN used by the classifier, preemption and DDP tests is the
same network everywhere, and a change of a preset field is made once.
"""

from __future__ import annotations

#: A 16 px MR-GAN pyramid (4, 8, 16), 8 channels at the top.
GAN_NET = ["image_size=16", "base_size=4", "z_dim=16", "top_channels=8", "max_channels=32"]

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
