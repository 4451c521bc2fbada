"""The private descriptor pool that holds this package's protos.

The official ``yandexcloud`` SDK registers the same proto files in protobuf's
default pool; a second, different definition of one file there raises.  Our
generated modules register into this pool instead, so both can be imported in
one kernel.  The well-known types our files import are added first.
"""

from google.protobuf import any_pb2, descriptor_pool, duration_pb2, empty_pb2, timestamp_pb2

POOL = descriptor_pool.DescriptorPool()
for _wkt in (any_pb2, duration_pb2, empty_pb2, timestamp_pb2):
    POOL.AddSerializedFile(_wkt.DESCRIPTOR.serialized_pb)
