"""hubcompare: do these two neural networks learn the same things?

Importing the package registers the ``cifar_resnet`` family with timm.
"""

from .models import resnet as _models  # noqa: F401  (registers cifar_resnet with timm)
from .errors import HubcompareError

__version__ = "0.1.0"
__all__ = ["HubcompareError", "__version__"]
