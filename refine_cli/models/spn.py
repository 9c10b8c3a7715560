"""(in progress) SPN refiners."""
def spn_universal(**kw): raise NotImplementedError
def spn_voc21(**kw): raise NotImplementedError
