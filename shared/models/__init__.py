"""The model zoo: every architecture condex trains or distils, built by name.

```python
net = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, width=16)
logits, features = net(x, return_features=True)   # features: N x net.feature_dim
```
Importing this package imports every family module, which registers its names in ``models``.
"""

from shared.models import convnet, lenet, mobilenetv2, resnet, vgg, wrn  # noqa: F401  (fill the registry)
from shared.models.base import (
    Classifier,
    batchnorm_layers,
    build_model,
    count_parameters,
    model_names,
    model_options,
    models,
)

__all__ = [
    "Classifier",
    "batchnorm_layers",
    "build_model",
    "count_parameters",
    "model_names",
    "model_options",
    "models",
]
