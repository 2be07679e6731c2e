"""rlfat-tf: Robust Local Features for Adversarial Training in TensorFlow 2 / Keras 3."""
