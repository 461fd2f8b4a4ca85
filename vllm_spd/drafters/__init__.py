"""Where drafts come from: the draft module (``pdm``, its device form ``device_draft``),
prompt lookup (``ngram``, ``device_lookup``), their hybrid, and the benchmark oracle
(``oracle``). The host cycle reaches them through :class:`~.drafting.Drafter`
(``make_drafter``), the device cycle through :class:`~.device_drafters.DeviceDrafter`.
"""
