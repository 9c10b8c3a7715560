"""(in progress) DeepLab-LargeFOV."""
def deeplab_largefov(**kw): raise NotImplementedError
