"""Bridges to other frameworks. Each is imported lazily: ``import convlayers`` loads none.

- :mod:`convlayers.interop.torch`: :func:`~convlayers.interop.torch.from_torch`,
  :func:`~convlayers.interop.torch.to_torch` and
  :func:`~convlayers.interop.torch.state_dict_from_torch` (PyTorch itself is imported only
  when one of them is called).
"""
