"""What client, packaging and server share: errors, the wire contract, connection files, bundles, requirements.

Imports only the standard library, grpc, protobuf, pypa ``packaging``, psutil and ``jupyter_ds_jobs._proto``.
"""
