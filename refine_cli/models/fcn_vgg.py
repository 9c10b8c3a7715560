"""(in progress) FCN-32s/16s/8s on VGG-16."""
def fcn32s(**kw): raise NotImplementedError
def fcn16s(**kw): raise NotImplementedError
def fcn8s(**kw): raise NotImplementedError
