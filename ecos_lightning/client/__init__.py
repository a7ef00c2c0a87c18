"""The client device's own records and rules (no torch in :mod:`.ledger`):

* :mod:`.ledger`: the privacy ledger every release is recorded in before it leaves (lock, budget,
  strict schema);
* :mod:`.encoder_policy`: which encoders a client accepts from the cloud, and at what input size.
"""
