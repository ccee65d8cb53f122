"""``bnn-export bench``: latency and accuracy of exported models, locally or on devices.

Modules: ``latency`` (timing loop), ``accuracy`` (top-1 and agreement), ``macs`` (MAC and
parameter counts of an artifact or checkpoint), ``local`` and ``remote`` (where a row is
measured), ``report`` (JSON schema, markdown table, plot). Kept import-light: the remote
worker imports ``latency`` on devices that have only numpy and onnxruntime.
"""
