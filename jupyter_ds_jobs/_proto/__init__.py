"""Generated protobuf and gRPC modules (see scripts/gen_protos.py).

Short aliases for the modules the rest of the package uses::

    from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2, pjs_grpc, op_pb2, ops_pb2, ops_grpc
    from jupyter_ds_jobs._proto import project_pb2, ps_pb2, ps_grpc  # ProjectService.Get only
    from jupyter_ds_jobs._proto import iam_pb2, iam_grpc  # IamTokenService (sign-in)
"""

from jupyter_ds_jobs._proto.google.rpc import status_pb2
from jupyter_ds_jobs._proto.yandex.cloud.datasphere.v2 import project_pb2
from jupyter_ds_jobs._proto.yandex.cloud.datasphere.v2 import project_service_pb2 as ps_pb2
from jupyter_ds_jobs._proto.yandex.cloud.datasphere.v2 import project_service_pb2_grpc as ps_grpc
from jupyter_ds_jobs._proto.yandex.cloud.datasphere.v2.jobs import jobs_pb2
from jupyter_ds_jobs._proto.yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as pjs_pb2
from jupyter_ds_jobs._proto.yandex.cloud.datasphere.v2.jobs import project_job_service_pb2_grpc as pjs_grpc
from jupyter_ds_jobs._proto.yandex.cloud.iam.v1 import iam_token_service_pb2 as iam_pb2
from jupyter_ds_jobs._proto.yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc
from jupyter_ds_jobs._proto.yandex.cloud.operation import operation_pb2 as op_pb2
from jupyter_ds_jobs._proto.yandex.cloud.operation import operation_service_pb2 as ops_pb2
from jupyter_ds_jobs._proto.yandex.cloud.operation import operation_service_pb2_grpc as ops_grpc

__all__ = [
    "iam_grpc",
    "iam_pb2",
    "jobs_pb2",
    "op_pb2",
    "ops_grpc",
    "ops_pb2",
    "pjs_grpc",
    "pjs_pb2",
    "project_pb2",
    "ps_grpc",
    "ps_pb2",
    "status_pb2",
]
