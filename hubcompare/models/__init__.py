"""What a model is and how it sits on disk.

``resnet`` (the CIFAR ResNet family, registered with timm), ``metadata`` (the typed record of what
describes a model), ``checkpoint`` (the folder: files and validation, no torch), ``weights`` (loading a
folder's model, writing a folder), ``card`` (model cards), ``predictions`` (per-example predictions),
``inputs`` (how a model sees its input).
"""
