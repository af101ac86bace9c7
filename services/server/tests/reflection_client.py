"""A gRPC client that knows nothing of vidx's .proto files: it learns the services through
server reflection (grpcio-reflection speaks only grpc.reflection.v1alpha), builds the Search
request from the descriptors it was sent, and calls it.

    python3 reflection_client.py HOST:PORT TOKEN QUERY

Prints {"services": [...], "hits": [...]} as JSON. Run by services/server/tests/grpc_api.rs.
"""

import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    address, token, query = sys.argv[1:4]
    channel = grpc.insecure_channel(address)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    pool = DescriptorPool(database)
    method = pool.FindServiceByName("vidx.v1.SearchService").FindMethodByName("Search")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.ParseDict({"query": query, "top_k": 10}, request_class())
    search = channel.unary_unary(
        "/vidx.v1.SearchService/Search",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    response = search(request, metadata=[("authorization", f"Bearer {token}")], timeout=20)
    hits = json_format.MessageToDict(response, preserving_proto_field_name=True).get("hits", [])
    print(json.dumps({"services": services, "hits": hits}))


if __name__ == "__main__":
    main()
