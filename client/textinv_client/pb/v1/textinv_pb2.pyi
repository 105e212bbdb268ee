from . import concepts_pb2 as _concepts_pb2
from . import generate_pb2 as _generate_pb2
from . import jobs_pb2 as _jobs_pb2
from . import server_info_pb2 as _server_info_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
