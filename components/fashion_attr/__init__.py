"""fashion_attr: the library behind the fashion attribute retraining pipeline.

Implements Ye et al., "Hard-Aware Fashion Attribute Classification": HABP
(hard-aware back-propagation), MR-GAN with decorrelation regularisation, and
Deact (deactivation training on synthetic complementary samples), plus the
data, training, evaluation and registry steps that the Kubeflow pipeline runs.
This package never imports kfp.
"""

__version__ = "0.1.0"
