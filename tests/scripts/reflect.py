"""Lists a gRPC server's services and one service's methods through server
reflection alone (no .proto files), with Python's grpcio: what grpcurl and
grpcui do. Usage: reflect.py HOST:PORT SERVICE. Prints one service per line,
then `SERVICE/METHOD` lines."""

import sys

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main() -> None:
    target, service = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=service),
        ]
        listed, files = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
        for s in listed.list_services_response.service:
            print(s.name)
        package, _, name = service.rpartition(".")
        for raw in files.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fd.package != package:
                continue
            for svc in fd.service:
                if svc.name == name:
                    for m in svc.method:
                        print(f"{service}/{m.name}")


if __name__ == "__main__":
    main()
