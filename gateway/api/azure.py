"""Azure OpenAI's paths, served as the OpenAI endpoints they are (the Azure door).

The openai SDK's ``AzureOpenAI`` client, and what is built on it (LangChain's
``AzureChatOpenAI``, LlamaIndex's ``AzureOpenAI``, Semantic Kernel...), calls
``{azure_endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`` (and
``/completions``, ``/embeddings``) with its key in an ``api-key`` header, and the Responses API
at ``{azure_endpoint}/openai/responses``. Pointing ``azure_endpoint`` at the gateway is all such
an app changes:

- the **deployment in the path is the model group**, as Azure serves the path's deployment
  whatever the body's ``model`` says (``AzureOpenAI(azure_deployment=...)`` sends the body's
  ``model`` unchanged): the body's ``model`` is replaced by it before anything reads the body;
- the **key** is a gateway key, as ``api-key`` (the SDK's ``api_key``) or ``Authorization:
  Bearer`` (its ``azure_ad_token``); ``Authorization`` wins when both are sent, as on the
  Messages door;
- ``api-version`` is accepted whatever it says and not required: the gateway speaks one version
  of the format (each ``kind: azure`` deployment is called with its own ``api_version``);
- errors are OpenAI's envelope, which is the shape the SDK reads from Azure too; a deployment
  that is no group the key may call is Azure's 404 ``DeploymentNotFound``, which apps written
  for Azure test for.

From there a call is the OpenAI endpoint's: the same request service, routing, failover, cache,
limits, metrics (under the Azure route's own path label) and access log.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.errors import DeploymentNotFound, ModelNotFound
from gateway.http.auth import AZURE_API_KEY, authenticate
from gateway.http.body import json_now, read_json
from gateway.http.responses import json_response
from gateway.http.sse import send_stream
from gateway.service.context import CallContext
from gateway.wire.requests import Endpoint

AZURE_PREFIX = "/openai/"
# Where AzureOpenAI sends each endpoint that takes a deployment (the SDK's ``_deployments_endpoints``
# that the gateway serves), with the endpoint it is.
DEPLOYMENT_PATHS = {
    "/openai/deployments/{deployment}/chat/completions": Endpoint.CHAT,
    "/openai/deployments/{deployment}/completions": Endpoint.COMPLETIONS,
    "/openai/deployments/{deployment}/embeddings": Endpoint.EMBEDDINGS,
    "/openai/deployments/{deployment}/images/generations": Endpoint.IMAGES,
    "/openai/deployments/{deployment}/audio/speech": Endpoint.SPEECH,
}

# Azure's v1 API (``{endpoint}/openai/v1/...``, no ``api-version`` or ``preview``), which the
# plain ``OpenAI`` client calls with ``base_url={endpoint}/openai/v1/``: OpenAI's paths, the model
# in the body, the key as ``Authorization: Bearer`` or ``api-key``.
V1_PATHS = {
    "/openai/v1/chat/completions": Endpoint.CHAT,
    "/openai/v1/completions": Endpoint.COMPLETIONS,
    "/openai/v1/embeddings": Endpoint.EMBEDDINGS,
    "/openai/v1/images/generations": Endpoint.IMAGES,
    "/openai/v1/audio/speech": Endpoint.SPEECH,
}


def proxy(endpoint: Endpoint, app: web.Application) -> Handler:
    """The handler of ``endpoint`` under a deployment path: ``api/openai.proxy``'s, with the key
    also as ``api-key`` and the model from the path."""
    service = app[keys.SERVICE]
    open_mode = app[keys.POLICY].auth.mode == "open"
    max_body_bytes = app[keys.SETTINGS].max_body_bytes or 0

    async def handle(request: web.Request) -> web.StreamResponse:
        started_s = time.perf_counter()
        caller = None if open_mode else await authenticate(request, key_header=AZURE_API_KEY)
        ctx = CallContext.for_client(
            request[keys.REQUEST_ID],
            started_s,
            request.headers,
            caller,
            request[keys.REQUEST_CALL],
            AZURE_API_KEY,
        )
        body = json_now(request, max_body_bytes)  # (no coroutine when the body is in, as most are)
        if body is None:
            body = await read_json(request, max_body_bytes, ctx)
        body["model"] = deployment = request.match_info["deployment"]
        try:
            answer = await service.run(endpoint, body, ctx)
        except ModelNotFound as exc:
            if exc.model != deployment:
                raise
            raise DeploymentNotFound(deployment, exc.available) from None
        if answer.stream is not None:
            return await send_stream(request, answer.stream, ctx.request_id, media_type=answer.media_type)
        return json_response(answer.body or b"{}")

    return handle


def key_header(request: web.Request) -> str:
    """The header a handler shared by the OpenAI and Azure paths also takes the key from:
    ``api-key`` under ``/openai/``, none elsewhere."""
    return AZURE_API_KEY if request.path.startswith(AZURE_PREFIX) else ""
