"""RFC 9728 protected-resource metadata, RFC 8707 audience binding, and scope implications."""

from __future__ import annotations

import io
from wsgiref.handlers import SimpleHandler

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from bearerguard import BearerGuard
from bearerguard._core.scopes import ScopeImplications
from bearerguard.dpop import DPoPPolicy
from bearerguard.errors import ConfigurationError, InvalidAudienceError
from bearerguard.issuers import TrustedIssuers
from bearerguard.metadata import WELL_KNOWN_PATH, ProtectedResource, ResourceMetadata
from bearerguard.mtls import CertificateBinding
from bearerguard.testing import DevIssuer
from tests.apps import build_app, build_flask_app

pytestmark = pytest.mark.anyio

ISSUER = "https://issuer.example"


@pytest.mark.parametrize(
    ("resource", "url", "paths"),
    [
        # RFC 9728 §3.1: the suffix goes between the host and the path.
        (
            "https://api.example/mcp",
            "https://api.example/.well-known/oauth-protected-resource/mcp",
            {WELL_KNOWN_PATH, WELL_KNOWN_PATH + "/mcp"},
        ),
        (
            "https://api.example",
            "https://api.example/.well-known/oauth-protected-resource",
            {WELL_KNOWN_PATH},
        ),
        # A terminating slash after the host is dropped.
        (
            "https://api.example/",
            "https://api.example/.well-known/oauth-protected-resource",
            {WELL_KNOWN_PATH},
        ),
        (
            "https://api.example:8443/v1/tenant/",
            "https://api.example:8443/.well-known/oauth-protected-resource/v1/tenant/",
            {WELL_KNOWN_PATH, WELL_KNOWN_PATH + "/v1/tenant/"},
        ),
        (
            "http://127.0.0.1:8000/mcp",
            "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp",
            {WELL_KNOWN_PATH, WELL_KNOWN_PATH + "/mcp"},
        ),
        # Servers hand apps the decoded path: the served path is the decoded suffix.
        (
            "https://api.example/notes%20v2/%7Emia",
            "https://api.example/.well-known/oauth-protected-resource/notes%20v2/%7Emia",
            {WELL_KNOWN_PATH, WELL_KNOWN_PATH + "/notes v2/~mia"},
        ),
    ],
)
def test_well_known_urls(resource: str, url: str, paths: set[str]) -> None:
    published = ProtectedResource(resource, ISSUER, None)
    assert published.metadata_url == url
    assert published.paths == paths
    assert published.document == {
        "resource": resource,
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
    }


def test_document_members() -> None:
    published = ProtectedResource(
        "https://api.example",
        ISSUER,
        ResourceMetadata(
            scopes_supported=["items:read", "items:write"],
            authorization_servers=["https://as1.example", "https://as2.example"],
            resource_name="Items",
            resource_documentation="https://docs.example/items",
            extra={"tls_client_certificate_bound_access_tokens": False},
        ),
    )
    assert published.document == {
        "resource": "https://api.example",
        "authorization_servers": ["https://as1.example", "https://as2.example"],
        "scopes_supported": ["items:read", "items:write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Items",
        "resource_documentation": "https://docs.example/items",
        "tls_client_certificate_bound_access_tokens": False,
    }
    status, headers, body = published.response("GET")
    assert status == 200
    assert body == published.body
    assert ("content-type", "application/json") in headers
    assert published.response("HEAD")[2] == b""
    assert published.response("POST")[:2] == (
        405,
        [("allow", "GET, HEAD, OPTIONS"), ("content-length", "0")],
    )
    assert repr(published) == "ProtectedResource('https://api.example')"


def test_a_single_string_is_one_scope_as_it_is_one_server() -> None:
    published = ProtectedResource(
        "https://api.example",
        ISSUER,
        ResourceMetadata(scopes_supported="items:read", authorization_servers=ISSUER),
    )
    assert published.document["scopes_supported"] == ["items:read"]
    assert published.document["authorization_servers"] == [ISSUER]
    with pytest.raises(ConfigurationError):
        ProtectedResource("https://api.example", ISSUER, ResourceMetadata(scopes_supported="a b"))
    first = ProtectedResource("https://api.example", ISSUER, ResourceMetadata(challenge_scopes="a"))
    assert first.challenge_scopes == ("a",)
    assert "challenge_scopes" not in first.document  # no member of the document
    with pytest.raises(ConfigurationError, match="invalid scope"):
        ProtectedResource("https://api.example", ISSUER, ResourceMetadata(challenge_scopes="a b"))


def test_the_wsgi_middlewares_401_names_the_challenge_scopes(session_issuer: DevIssuer) -> None:
    # MCP authorization, scope selection strategy: what a client should request first, in
    # every 401 (RFC 6750 §3 scope), whichever middleware answers it.
    metadata = ResourceMetadata(scopes_supported=["items:read"], challenge_scopes=["items:read"])
    guard = session_issuer.guard(
        in_process=True, resource="http://127.0.0.1:8000", resource_metadata=metadata
    )
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    answer = io.BytesIO()
    SimpleHandler(io.BytesIO(), answer, io.StringIO(), environ).run(build_flask_app(guard))
    head = answer.getvalue().split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.0 401")
    assert 'scope="items:read"' in head


def test_the_document_states_the_sender_constrained_tokens_the_guard_takes() -> None:
    # RFC 9728 §2: omitted, dpop_bound_access_tokens_required and
    # tls_client_certificate_bound_access_tokens mean false.
    def document(**options: object) -> dict[str, object]:
        guard = BearerGuard(
            issuer=ISSUER, jwks_uri=ISSUER + "/jwks", resource="https://api.example", **options
        )
        assert guard.protected_resource is not None
        return dict(guard.protected_resource.document)

    assert "dpop_bound_access_tokens_required" not in document()
    assert "tls_client_certificate_bound_access_tokens" not in document()
    required = document(dpop=DPoPPolicy(mode="required", algorithms=["ES256", "EdDSA"]))
    assert required["dpop_bound_access_tokens_required"] is True
    assert required["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    assert document(dpop=DPoPPolicy())["dpop_bound_access_tokens_required"] is False
    assert document(mtls=CertificateBinding())["tls_client_certificate_bound_access_tokens"]
    with pytest.raises(ConfigurationError, match="contradicts"):
        document(
            mtls=CertificateBinding(),
            resource_metadata=ResourceMetadata(
                extra={"tls_client_certificate_bound_access_tokens": False}
            ),
        )
    # Claiming a binding the guard does not check contradicts it too: clients would obtain
    # bound tokens, which the guard refuses; unless a gateway in front checks them.
    for claim in (
        {"dpop_bound_access_tokens_required": True},
        {"dpop_signing_alg_values_supported": ["ES256"]},
        {"tls_client_certificate_bound_access_tokens": True},
    ):
        with pytest.raises(ConfigurationError, match="contradicts"):
            document(resource_metadata=ResourceMetadata(extra=claim))
        upstream = document(
            resource_metadata=ResourceMetadata(extra=claim), bindings_checked_upstream=True
        )
        assert claim.items() <= upstream.items()
    unclaimed = {"dpop_bound_access_tokens_required": False}
    assert (
        unclaimed.items() <= document(resource_metadata=ResourceMetadata(extra=unclaimed)).items()
    )
    # Several issuers: the document naming them all keeps the members.
    policy = DPoPPolicy(mode="required")
    guards = [
        BearerGuard(
            issuer=issuer, jwks_uri=issuer + "/jwks", resource="https://api.example", dpop=policy
        )
        for issuer in (ISSUER, "https://other.example")
    ]
    published = TrustedIssuers(guards).protected_resource
    assert published is not None
    assert published.document["dpop_bound_access_tokens_required"] is True
    assert published.document["authorization_servers"] == [ISSUER, "https://other.example"]


@pytest.mark.parametrize(
    "resource",
    [
        "https://api.example/mcp#",
        "https://api.example/mcp#x",
        "https://api.example/a/../b",
        "https://api.example/./mcp",
        # Percent-encoded: a WHATWG URL parser removes them as it removes "." and "..".
        "https://api.example/a/%2e%2e/b",
        "https://api.example/%2E/mcp",
        "https://api.example/mcp/.%2e",
    ],
)
def test_a_resource_with_a_fragment_or_dot_segments_is_refused(resource: str) -> None:
    # RFC 8707 §2: no fragment; dot segments would make the served metadata path differ.
    with pytest.raises(ConfigurationError, match=r"fragment|dot segments"):
        BearerGuard(issuer=ISSUER, resource=resource)


@pytest.mark.parametrize(
    "resource",
    [
        "https://api.example/a b",
        "https://api.example\\mcp",
        "https://api.example/a\\b",
        'https://api.example/"mcp"',
        "https://api.example/{mcp}",
        "https://api.example/m|cp",
        "https://api.example/%zz",
    ],
)
def test_a_resource_that_is_not_a_uri_is_refused(resource: str) -> None:
    # RFC 8707 §2: a URI (RFC 3986). Clients' URL parsers encode a space and read a
    # backslash as a slash: the aud they obtained never equalled such a resource.
    with pytest.raises(ConfigurationError, match="URI"):
        BearerGuard(issuer=ISSUER, resource=resource)


@pytest.mark.parametrize(
    "resource",
    [
        "https://api.example:443/mcp",
        "https://api.example:/mcp",
        "https://api.example:0443/mcp",
        "http://127.0.0.1:80/mcp",
        "http://[::1]:80/mcp",
        "https://api.example:08443",
    ],
)
def test_a_resource_with_a_port_in_another_form_than_clients_send_is_refused(
    resource: str,
) -> None:
    # RFC 3986 §6.2.3: clients drop a default port (and read 0443 as 443), so the aud they
    # obtain is "https://api.example/mcp": a guard expecting the port refused every token.
    with pytest.raises(ConfigurationError, match="port"):
        BearerGuard(issuer=ISSUER, resource=resource)
    canonical = "https://api.example:8443/mcp"
    assert BearerGuard(issuer=ISSUER, resource=canonical).audiences == (canonical,)
    assert BearerGuard(issuer=ISSUER, resource="http://[::1]:8000/mcp").resource


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"resource": "ftp://api.example"}, "https URL"),
        ({"resource": "http://api.example/mcp"}, "https URL"),
        ({"resource": "https://api.example/mcp#x"}, "fragment"),
        ({"resource": "https://api.example/mcp?tenant=a"}, "query"),
        ({"resource": "https://API.example/mcp"}, "lower-case"),
        ({"audience": "a", "resource_metadata": ResourceMetadata()}, "needs resource"),
        ({}, "give audience= .the aud your API is registered as"),
        (
            {
                "resource": "https://api.example",
                "resource_metadata": ResourceMetadata(extra={"resource": "x"}),
            },
            "set by the guard",
        ),
        (
            {
                "resource": "https://api.example",
                "resource_metadata": ResourceMetadata(extra={"x": {1, 2}}),
            },
            "not JSON",
        ),
        (
            {
                "resource": "https://api.example",
                "resource_metadata": ResourceMetadata(extra={"x": float("nan")}),
            },
            "not JSON",  # json.dumps writes NaN, which no JSON parser need take (RFC 8259 §6)
        ),
        (
            {
                "resource": "https://api.example",
                "resource_metadata": ResourceMetadata(extra={1: "a"}),  # type: ignore[dict-item]
            },
            "not JSON",  # json.dumps writes the member name "1"
        ),
        (
            {
                "resource": "https://api.example",
                "resource_metadata": ResourceMetadata(scopes_supported=["a b"]),
            },
            "invalid scope",
        ),
        (
            {
                "resource": "https://api.example",
                "resource_metadata": ResourceMetadata(resource_name=""),
            },
            "non-empty",
        ),
    ],
)
def test_resource_configuration_errors(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        BearerGuard(issuer=ISSUER, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        (ResourceMetadata(authorization_servers=["issuer.example"]), "authorization_servers"),
        (ResourceMetadata(authorization_servers=[ISSUER, "an issuer"]), "authorization_servers"),
        (ResourceMetadata(authorization_servers=["http://as.example"]), "authorization_servers"),
        (ResourceMetadata(authorization_servers=[f"{ISSUER}?tenant=a"]), "query"),
        (ResourceMetadata(resource_documentation="/docs/items"), "resource_documentation"),
        (ResourceMetadata(resource_documentation="see the wiki"), "resource_documentation"),
        (ResourceMetadata(resource_documentation="mailto:api@example.com"), "absolute http"),
    ],
)
def test_members_clients_cannot_parse_as_urls_are_refused(
    metadata: ResourceMetadata, match: str
) -> None:
    # RFC 9728 §2: issuer identifiers (RFC 8414 §2) and a URL. The MCP SDK's client drops a
    # document with any other string in them, authorization servers and all: it could
    # never find where to get a token.
    sdk = pytest.importorskip("mcp.shared.auth")
    with pytest.raises(ConfigurationError, match=match):
        BearerGuard(issuer=ISSUER, resource="https://api.example/mcp", resource_metadata=metadata)
    valid = ResourceMetadata(
        authorization_servers=[ISSUER, "http://127.0.0.1:8000"],
        resource_documentation="http://docs.example/items",
    )
    guard = BearerGuard(issuer=ISSUER, resource="https://api.example/mcp", resource_metadata=valid)
    assert guard.protected_resource is not None
    sdk.ProtectedResourceMetadata.model_validate_json(guard.protected_resource.body)


@pytest.mark.parametrize(
    "extra",
    [
        {"resource_documentation": "see the wiki"},
        {"resource_name": 5},
        {"scopes_supported": "notes:read"},
        {"scopes_supported": ["a b"]},
    ],
    ids=["documentation", "name", "scopes-string", "scope-not-a-token"],
)
def test_a_modelled_member_given_as_extra_is_refused(extra: dict[str, object]) -> None:
    # Given as extra, these members escaped the checks of their ResourceMetadata argument:
    # the MCP SDK's client drops a document whose resource_documentation is not a URL,
    # authorization servers and all.
    with pytest.raises(ConfigurationError, match="ResourceMetadata argument"):
        BearerGuard(
            issuer=ISSUER,
            resource="https://api.example/mcp",
            resource_metadata=ResourceMetadata(extra=extra),
        )


def test_the_resource_is_the_default_audience() -> None:
    guard = BearerGuard(issuer=ISSUER, resource="https://api.example/mcp")
    assert guard.audiences == ("https://api.example/mcp",)
    assert guard.resource == "https://api.example/mcp"
    assert guard.realm == "https://api.example/mcp"
    other = BearerGuard(issuer=ISSUER, audience="api://items", resource="https://api.example")
    assert other.audiences == ("api://items",)
    assert BearerGuard(issuer=ISSUER, audience="a").resource is None


def test_a_browsers_cors_preflight_for_the_document_is_answered() -> None:
    # A browser-based MCP client sends MCP-Protocol-Version with its GET: the browser asks
    # first with a preflight, and sends the GET only after a 2xx allowing it (Fetch standard).
    guard = BearerGuard(
        issuer=ISSUER, jwks_uri=ISSUER + "/jwks", resource="https://api.example/mcp"
    )
    url = "https://api.example/.well-known/oauth-protected-resource/mcp"
    preflight = {
        "Origin": "https://client.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "mcp-protocol-version",
    }
    with TestClient(build_app(guard)) as client:
        answers = [client.options(url, headers=preflight)]
    with httpx.Client(transport=httpx.WSGITransport(app=build_flask_app(guard))) as client:
        answers.append(client.options(url, headers=preflight))
    for answer in answers:
        assert (answer.status_code, answer.content) == (204, b"")
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "GET" in answer.headers["access-control-allow-methods"]
        assert answer.headers["access-control-allow-headers"] == "*"


def test_a_wsgi_server_cannot_change_the_preflight_answer_of_later_requests() -> None:
    # The preflight's headers were one module-level list handed to start_response: wsgiref
    # (and Django's runserver, built on it) appends Content-Length to the list it is given,
    # so every later preflight, ASGI ones included, carried it on a 204 (RFC 9110 §8.6).
    guard = BearerGuard(
        issuer=ISSUER, jwks_uri=ISSUER + "/jwks", resource="http://127.0.0.1:8000/mcp"
    )
    environ = {
        "REQUEST_METHOD": "OPTIONS",
        "PATH_INFO": "/.well-known/oauth-protected-resource/mcp",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    answer = io.BytesIO()
    SimpleHandler(io.BytesIO(), answer, io.StringIO(), environ).run(build_flask_app(guard))
    assert answer.getvalue().startswith(b"HTTP/1.0 204")
    status, headers, _ = guard.protected_resource.response("OPTIONS")  # type: ignore[union-attr]
    assert status == 204
    assert "content-length" not in {name.lower() for name, _ in headers}


async def test_a_token_for_another_resource_is_refused(issuer: DevIssuer) -> None:
    # RFC 8707: the same trusted issuer mints tokens for many resources; a token obtained
    # for another one must not be accepted here.
    guard = issuer.guard(audience=None, resource="http://127.0.0.1:9/mcp")
    ok = await guard.authenticate(issuer.mint(aud="http://127.0.0.1:9/mcp"))
    assert ok.audience == ("http://127.0.0.1:9/mcp",)
    for audience in ["http://127.0.0.1:9/other", "http://127.0.0.1:9/mcp/", "http://127.0.0.1:9"]:
        with pytest.raises(InvalidAudienceError):
            await guard.authenticate(issuer.mint(aud=audience))


@pytest.mark.parametrize("resource", ["http://127.0.0.1:9", "http://127.0.0.1:9/"])
async def test_a_resource_without_a_path_takes_its_aud_with_or_without_the_slash(
    issuer: DevIssuer, resource: str
) -> None:
    # RFC 3986 §6.2.3: for http(s) an empty path is "/", one URI spelt two ways, and MCP
    # takes both as the canonical server URI. Clients that serialize the metadata's
    # resource with a URL parser (WHATWG URL's href: the MCP TypeScript SDK, Claude Code)
    # ask for "http://127.0.0.1:9/" when it says "http://127.0.0.1:9", and an authorization
    # server puts what they asked for in aud: every token of theirs was refused.
    guard = issuer.guard(audience=None, resource=resource)
    for aud in ("http://127.0.0.1:9", "http://127.0.0.1:9/"):
        assert (await guard.authenticate(issuer.mint(aud=aud))).audience == (aud,)
    assert guard.realm == resource  # as configured
    for other in ["http://127.0.0.1:9//", "http://127.0.0.1:9/mcp", "http://127.0.0.1:90"]:
        with pytest.raises(InvalidAudienceError):
            await guard.authenticate(issuer.mint(aud=other))


# -- scope implications -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "required", "any_of", "expected"),
    [
        ({"items:write"}, ("items:read",), False, True),
        ({"items:admin"}, ("items:read",), False, True),  # transitive
        ({"items:read"}, ("items:write",), False, False),  # never upwards
        ({"admin"}, ("admin:users", "admin:billing:read"), False, True),
        ({"admin"}, ("admin",), False, True),
        ({"admin"}, ("administrator",), False, False),  # a prefix ends at the colon given
        ({"admin:*"}, ("admin:users",), False, False),  # token scopes are literal
        ({"admin"}, ("audit:read",), False, True),  # via a key matched by a prefix
        ({"items:write"}, ("items:read", "items:delete"), False, False),
        ({"items:write"}, ("items:read", "items:delete"), True, True),
        (set(), ("items:read",), True, False),
        ({"Items:write"}, ("items:read",), False, False),  # case-sensitive
    ],
)
def test_implications(
    granted: set[str], required: tuple[str, ...], any_of: bool, expected: bool
) -> None:
    implications = ScopeImplications(
        {
            "items:admin": ["items:write", "items:delete"],
            "items:write": ["items:read"],
            "admin": ["admin:*"],
            "admin:audit": ["audit:read"],
        }
    )
    assert implications.grants(frozenset(granted), required, any_of=any_of) is expected
    assert implications.grants(frozenset(granted), required, any_of=any_of) is expected  # cached


def test_implications_declared_and_validated() -> None:
    implications = ScopeImplications({"a": "b", "c": ["d:*"]})
    assert implications.declared == {"a", "b", "c"}
    assert bool(implications)
    assert not ScopeImplications()
    assert not ScopeImplications().grants(frozenset({"a"}), ("b",), any_of=False)
    assert ScopeImplications.of(implications) is implications
    assert "ScopeImplications" in repr(implications)
    cyclic = ScopeImplications({"a": ["b"], "b": ["a", "c"]})
    assert cyclic.grants(frozenset({"a"}), ("c",), any_of=False)
    for bad in [
        {"a:*": ["b"]},
        {"a": ["*"]},
        {"a": ["b*c"]},
        {"a b": ["c"]},
        {"a": [""]},
        {"a": None},  # a TypeError before, not the ConfigurationError documented
        {"a": 5},
        {"a": True},
        {"a": {"b": ["c"]}},  # a nested map: its keys were read as the implied scopes
    ]:
        with pytest.raises(ConfigurationError):
            ScopeImplications(bad)


def test_implications_cache_is_bounded() -> None:
    implications = ScopeImplications({"a": ["b"]})
    for n in range(1100):
        implications.grants(frozenset({f"s{n}"}), ("b",), any_of=False)
    assert len(implications._cache) <= 1024


def test_an_extra_member_saying_what_the_guard_says_is_no_contradiction() -> None:
    # RFC 9728 §2: dpop_signing_alg_values_supported is a JSON array of algorithms, in no
    # order; a tuple serialises as one too. Only a different set contradicts the guard.
    policy = DPoPPolicy(algorithms=["ES256", "EdDSA"])

    def guard(given: object) -> BearerGuard:
        return BearerGuard(
            issuer=ISSUER,
            jwks_uri=ISSUER + "/jwks",
            resource="https://api.example",
            resource_metadata=ResourceMetadata(extra={"dpop_signing_alg_values_supported": given}),
            dpop=policy,
        )

    for given in (("ES256", "EdDSA"), ["EdDSA", "ES256"]):
        published = guard(given).protected_resource
        assert published is not None
        assert published.document["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    for other in (["ES256"], "ES256 EdDSA", ["ES256", "EdDSA", "RS256"]):
        with pytest.raises(ConfigurationError, match="contradicts"):
            guard(other)


async def test_the_document_is_served_under_a_root_path(session_issuer: DevIssuer) -> None:
    # uvicorn --root-path /api (a proxy strips /api) puts the root path in front of every
    # path (ASGI 3), the proxied well-known request's too: compared as public_paths are,
    # inside the app. (A WSGI SCRIPT_NAME is per request: see test_wsgi's mounted app.)
    from bearerguard.asgi import BearerGuardMiddleware

    guard = session_issuer.guard(
        in_process=True, audience=None, resource="http://127.0.0.1:9/api/mcp"
    )
    app = BearerGuardMiddleware(_not_found, guard=guard)
    transport = httpx.ASGITransport(app=app, root_path="/api")
    url = "/api/.well-known/oauth-protected-resource/api/mcp"
    token = session_issuer.mint(aud="http://127.0.0.1:9/api/mcp")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/api/mcp", headers=bearer)).status_code == 404  # verified
        for headers in ({}, bearer, {"Authorization": "Bearer x"}):  # a cache hit; a bad one
            answer = await client.get(url, headers=headers)
            assert answer.status_code == 200, headers
            assert answer.json()["resource"] == "http://127.0.0.1:9/api/mcp"
        assert (await client.get("/.well-known/oauth-protected-resource")).status_code == 200


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("not found", status_code=404)(scope, receive, send)


@pytest.mark.parametrize("server_root", ["", "/x"])
async def test_a_mounted_app_serves_no_metadata_inside_its_mount(
    session_issuer: DevIssuer, server_root: str
) -> None:
    # RFC 9728 §3.1, RFC 8615 §3: the well-known path follows the host, never a path below
    # it. A sub-app with its own middleware, mounted at /api, also answered the document at
    # /api/.well-known/oauth-protected-resource/api, a URL no challenge names and no client
    # derives, inside the API (without a token, over the app's own route there). The outer
    # app serves the advertised URL (serve_metadata); a server's root path (uvicorn
    # --root-path) still counts as the host's, as test_the_document_is_served_under_a_root_path.
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.routing import Mount, Route

    from bearerguard.asgi import BearerGuardMiddleware
    from bearerguard.fastapi import serve_metadata

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"app: {request.url.path}")

    resource = "https://api.example/api"
    guard = session_issuer.guard(in_process=True, audience=None, resource=resource)
    api = Starlette(
        routes=[Route("/{rest:path}", echo)],
        middleware=[Middleware(BearerGuardMiddleware, guard=guard)],
    )
    outer = serve_metadata(Starlette(routes=[Mount("/api", app=api)]), guard)
    transport = httpx.ASGITransport(app=outer, root_path=server_root)
    bearer = {"Authorization": f"Bearer {session_issuer.mint(aud=resource)}"}
    async with httpx.AsyncClient(transport=transport, base_url="https://api.example") as client:
        advertised = f"{server_root}{WELL_KNOWN_PATH}/api"
        document = await client.get(advertised)
        assert document.status_code == 200
        assert document.json()["resource"] == resource
        challenge = (await client.get(f"{server_root}/api/items")).headers["www-authenticate"]
        assert f'resource_metadata="https://api.example{WELL_KNOWN_PATH}/api"' in challenge
        for inside in (f"{WELL_KNOWN_PATH}/api", WELL_KNOWN_PATH):
            path = f"{server_root}/api{inside}"
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert "resource_metadata=" in refused.headers["www-authenticate"]
            mine = await client.get(path, headers=bearer)  # the app's own route answers
            assert (mine.status_code, mine.text) == (200, f"app: {path}")
