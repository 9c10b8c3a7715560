"""(in progress) torchvision-compatible segmentation models."""
def fcn_resnet(**kw): raise NotImplementedError
def deeplabv3_resnet(**kw): raise NotImplementedError
def deeplabv3_mobilenet_v3_large(**kw): raise NotImplementedError
