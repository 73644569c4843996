"""Batch completion webhooks: where they may go, how they are signed, and their one delivery per batch.

Who fires: whoever moves a batch's last unfinished job to a final state (the worker that finishes it, or
the API/SDK call that cancels it) calls `fire_if_batch_complete` after committing that change, and so does
the call that registers a webhook. A worker asks first, in the transaction that ends the job, whether the
batch has a webhook due (db.queries.batch_webhook_due), so a batch without one costs its jobs nothing more. A
conditional UPDATE in db.queries.claim_batch_webhook lets exactly one caller win; the winner delivers in a
background thread and records the outcome on the batch (its owner reads it in GET /batches/{id}).

Where they may go (`WebhookPolicy`, from settings): absolute http(s) URLs whose host resolves to public
addresses only. Loopback, private, link-local, shared (CGNAT), multicast, reserved, unspecified and
cloud-metadata addresses are refused, however spelled (`0x7f000001`, `2130706433`, `0177.1`, `[::1]`,
`[::ffff:127.0.0.1]`, fullwidth digits): at registration (`check_webhook_url`, a ValueError naming why) and
again at every send, because DNS may answer differently by then. A send connects to the very address it
checked (the Host header and the TLS server name and certificate check use the URL's host), never follows a
redirect, and records only `HTTP <status>` or a generic connection error, so failures do not map ports.
VIDEOSCORE_WEBHOOK_ALLOWED_HOSTS narrows the hosts; VIDEOSCORE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES opens loopback,
private and link-local addresses to on-prem receivers (metadata, multicast, reserved and unspecified never).

How they are signed: a delivery has an id (`X-VideoScore-Delivery`, the same on each retry of it) and each
attempt a Unix time (`X-VideoScore-Timestamp`); with VIDEOSCORE_WEBHOOK_SECRET set,
`X-VideoScore-Signature: t=<timestamp>,v1=<hex>` is HMAC-SHA256 of `<timestamp>.<delivery id>.<body>`.
A receiver calls `verify_signature`, which refuses a changed body or header, another secret, and a delivery
older than its tolerance; remembering the delivery ids it accepted within the tolerance refuses a replay
inside that window too. Standard library only: the producer stays light.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy.orm import Session

from videoscore.core.settings import Settings
from videoscore.db import queries
from videoscore.db.models import utcnow
from videoscore.db.session import Database

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-VideoScore-Signature"
TIMESTAMP_HEADER = "X-VideoScore-Timestamp"
DELIVERY_HEADER = "X-VideoScore-Delivery"
EVENT_HEADER = "X-VideoScore-Event"
EVENT = "batch.completed"
MAX_URL_CHARS = 2000
DEFAULT_TOLERANCE_S = 300.0

# What a batch's owner reads in `last_error`: the same words for a closed port, a timeout, a TLS or DNS failure.
CONNECTION_ERROR = "delivery failed: connection error"
REFUSED_ERROR = "delivery refused: the receiver's address is not allowed"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]

# Cloud instance-metadata services: never a receiver, whatever the settings allow.
METADATA_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.169.0/24",  # AWS, GCP, Azure, OCI, DigitalOcean… (169.254.169.254), AWS DNS and NTP
    "169.254.170.0/24",  # AWS ECS task metadata and credentials (169.254.170.2)
    "100.100.100.200/32",  # Alibaba Cloud
    "fd00:ec2::/64",  # AWS IMDS over IPv6 (fd00:ec2::254)
))
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                            "instance-data.ec2.internal"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# inet_aton's spellings of an IPv4 part: decimal, 0x-hex or 0-octal; 1 to 4 parts, the last filling the rest
_AT_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


class WebhookUrlError(ValueError):
    """The webhook URL may not be called."""


class WebhookHostNotFoundError(WebhookUrlError):
    """The webhook URL's host does not resolve (now: it may later)."""


@dataclass(frozen=True)
class WebhookPolicy:
    """Which receivers a webhook may reach: the settings' allowlist of hosts and whether private addresses may."""

    allowed_hosts: tuple[str, ...] = ()  # empty: any host; "*.example.com": its subdomains
    allow_private: bool = False

    @classmethod
    def of(cls, settings: Settings) -> WebhookPolicy:
        hosts = tuple(_canonical_host(h) for h in settings.webhook_allowed_hosts if h.strip())
        return cls(allowed_hosts=hosts, allow_private=settings.webhook_allow_private_addresses)

    def allows_host(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        for pattern in self.allowed_hosts:
            if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
            if host == pattern:
                return True
        return False

    def address_problem(self, address: IPAddress) -> str | None:
        """Why a webhook may not be sent to `address` (e.g. "a loopback address"), or None if it may."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d reaches a.b.c.d
                inner = self.address_problem(address.ipv4_mapped)
                return f"IPv4-mapped {address.ipv4_mapped}, {inner}" if inner else None
            for embedded in _embedded_ipv4(address):
                inner = self.address_problem(embedded)
                if inner:
                    return f"an address embedding {embedded}, {inner}"
        if any(address in network for network in METADATA_NETWORKS):
            return "a cloud metadata address"
        if address.is_unspecified or address in _THIS_NETWORK:
            return "an unspecified address"
        if address.is_multicast:
            return "a multicast address"
        if address.is_loopback:
            return None if self.allow_private else "a loopback address"
        if address.is_link_local:
            return None if self.allow_private else "a link-local address"
        if address.is_reserved:
            return "a reserved address"
        if address.is_private or not address.is_global:
            return None if self.allow_private else "a private address"
        return None


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL: where to connect (`address`) and what to say there (host, port, path)."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or canonical address: the Host header and the TLS server name
    port: int
    path: str  # path and query, percent-encoded, as the request line carries them
    address: IPAddress

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (the system resolver), in its order, without repeats."""
    found: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(str(sockaddr[0]))
            if address not in found:
                found.append(address)
    return found


def check_webhook_url(url: str, policy: WebhookPolicy | None = None, *,
                      resolve: Resolver = resolve_host) -> WebhookTarget:
    """The URL checked against the policy and resolved, or WebhookUrlError (a ValueError) saying why not.

    Every address the host resolves to must be allowed (a name that answers with one public and one private
    address is refused); the target carries the first, which a send connects to.
    """
    policy = policy or WebhookPolicy()
    scheme, host, port, path = _parse(url)
    if host in METADATA_HOSTS or host.endswith(".metadata.google.internal"):
        raise WebhookUrlError(f"webhook host {host!r} is a cloud metadata service")
    if not policy.allows_host(host):
        raise WebhookUrlError(f"webhook host {host!r} is not in VIDEOSCORE_WEBHOOK_ALLOWED_HOSTS")
    literal = _literal_address(host)
    if literal is not None:
        problem = policy.address_problem(literal)
        if problem:
            shown = host if host == str(literal) else f"{host} ({literal})"
            raise WebhookUrlError(f"webhook host {shown} is {problem}: webhooks go to public addresses only"
                                  + _private_hint(policy, problem))
        if host != str(literal):  # 0x08080808 or 134744072: one spelling per address, no parser can differ on
            raise WebhookUrlError(f"webhook host {host!r} spells the address {literal} unusually; write {literal}")
        return WebhookTarget(url, scheme, host, port, path, literal)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError, ValueError):
        addresses = []
    if not addresses:
        raise WebhookHostNotFoundError(f"webhook host {host!r} does not resolve")
    for address in addresses:
        problem = policy.address_problem(address)
        if problem:
            raise WebhookUrlError(f"webhook host {host!r} resolves to {address}, {problem}: webhooks go to public "
                                  f"addresses only" + _private_hint(policy, problem))
    return WebhookTarget(url, scheme, host, port, path, addresses[0])


def _parse(url: str) -> tuple[str, str, int, str]:
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlError(f"webhook url is longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise WebhookUrlError("webhook url must not contain spaces or control characters")
    try:
        parsed = urlsplit(url)
        port = parsed.port
        raw_host = parsed.hostname
    except ValueError:
        raise WebhookUrlError(f"webhook url {url[:200]!r} has an invalid host or port") from None
    if parsed.scheme not in ("http", "https") or not raw_host:
        raise WebhookUrlError(f"webhook url must be an absolute http:// or https:// URL, got {url[:200]!r}")
    if parsed.username is not None or parsed.password is not None:
        raise WebhookUrlError("webhook url must not carry a user name or password (the signature authenticates)")
    if port == 0:
        raise WebhookUrlError("webhook url has port 0")
    host = _canonical_host(raw_host)
    if not host:
        raise WebhookUrlError(f"webhook host {raw_host[:100]!r} is not a valid host name")
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    path = quote(path, safe="!#$%&'()*+,/:;=?@[]~")  # what is not ASCII, percent-encoded as UTF-8
    return parsed.scheme, host, port or (443 if parsed.scheme == "https" else 80), path


def _canonical_host(host: str) -> str:
    """Lower case, brackets and one trailing dot dropped, IDNA-encoded (fullwidth forms folded); "" if invalid."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""
    return ascii_host[:-1] if ascii_host.endswith(".") else ascii_host


def _literal_address(host: str) -> IPAddress | None:
    """The address `host` names literally, in any spelling a resolver takes (inet_aton's too); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_AT_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p[2:] or "0", 16) if p[:2].lower() == "0x" else int(p, 8 if p.startswith("0") else 10)
              for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    return ipaddress.IPv4Address(sum(v << (8 * (3 - i)) for i, v in enumerate(head)) + last)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address routes to: 6to4 (2002::/16) and NAT64 (64:ff9b::/96)."""
    embedded = [address.sixtofour] if address.sixtofour is not None else []
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return embedded


def _private_hint(policy: WebhookPolicy, problem: str) -> str:
    opens = ("a loopback address", "a link-local address", "a private address")
    if policy.allow_private or not problem.endswith(opens):
        return ""
    return " (an operator may allow on-prem receivers with VIDEOSCORE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES)"


# --- signing -------------------------------------------------------------------------------------------------


class WebhookSignatureError(ValueError):
    """The delivery is not signed with this secret, or is older than the tolerance."""


def sign(secret: str, timestamp: int, delivery_id: str, body: bytes) -> str:
    """The X-VideoScore-Signature value: `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<delivery id>.<body>">`."""
    signed = f"{timestamp}.{delivery_id}.".encode() + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *,
                     tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> str:
    """Check a received delivery; return its delivery id, or raise WebhookSignatureError saying why not.

    `headers` as received (any case), `body` the raw bytes before any JSON parsing. Refuses a delivery whose body,
    timestamp or delivery id was changed, one signed with another secret, and one whose timestamp is more than
    `tolerance_s` from now (a replay of a captured delivery). To refuse a replay within the tolerance as well,
    keep the ids returned in the last `tolerance_s` and refuse one seen before.
    """
    received = {str(k).lower(): str(v) for k, v in headers.items()}
    signature = received.get(SIGNATURE_HEADER.lower(), "")
    delivery_id = received.get(DELIVERY_HEADER.lower(), "")
    if not signature or not delivery_id:
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} or {DELIVERY_HEADER} header")
    pairs = [part.strip().partition("=") for part in signature.split(",")]
    stamps = [value for key, _, value in pairs if key == "t"]
    macs = [value for key, _, value in pairs if key == "v1"]
    if len(stamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", stamps[0]) or not macs:
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} is not t=<timestamp>,v1=<signature>")
    stamp = received.get(TIMESTAMP_HEADER.lower())
    if stamp is not None and stamp != stamps[0]:
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} does not match the signed timestamp")
    timestamp = int(stamps[0])
    expected = sign(secret, timestamp, delivery_id, body).rpartition("v1=")[2].encode()
    if not any(hmac.compare_digest(expected, mac.encode("utf-8", "replace")) for mac in macs):
        raise WebhookSignatureError("signature does not match: the body or a header was changed, or another "
                                    "secret signed it")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance_s:
        raise WebhookSignatureError(f"delivery signed {age:.0f}s ago; the tolerance is {tolerance_s:.0f}s")
    return delivery_id


# --- delivering ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    attempts: int
    error: str | None  # None when the receiver answered 2xx


def deliver(url: str, body: bytes, *, secret: str | None, max_attempts: int, timeout_s: float,
            backoff_s: float = 0.5, sleep: Callable[[float], None] = time.sleep,
            policy: WebhookPolicy | None = None, delivery_id: str | None = None,
            resolve: Resolver = resolve_host, clock: Callable[[], float] = time.time) -> Delivery:
    """POST `body` until a 2xx answer or `max_attempts` tries; waits backoff_s × 2^n between tries.

    Each attempt checks the URL against `policy` again and connects to the address it checked; a refused
    address ends the delivery at once. Redirects are answers like any other non-2xx: not followed.
    """
    delivery_id = delivery_id or uuid.uuid4().hex
    error = "not attempted"
    for attempt in range(1, max_attempts + 1):
        try:
            target = check_webhook_url(url, policy, resolve=resolve)
        except WebhookHostNotFoundError as exc:  # DNS may answer on a later attempt
            log.warning("webhook %s attempt %d: %s", delivery_id, attempt, exc)
            error = CONNECTION_ERROR
        except WebhookUrlError as exc:
            log.warning("webhook %s refused at send: %s", delivery_id, exc)
            return Delivery(attempt, REFUSED_ERROR)
        else:
            timestamp = int(clock())
            headers = {"Content-Type": "application/json", "User-Agent": "videoscore-queue", EVENT_HEADER: EVENT,
                       DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: str(timestamp)}
            if secret:
                headers[SIGNATURE_HEADER] = sign(secret, timestamp, delivery_id, body)
            try:
                status = _post(target, body, headers, timeout_s)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                log.warning("webhook %s attempt %d to %s failed: %s: %s", delivery_id, attempt, target.host,
                            type(exc).__name__, exc)
                error = CONNECTION_ERROR
            else:
                if 200 <= status < 300:
                    return Delivery(attempt, None)
                error = f"HTTP {status}"
        if attempt < max_attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(max_attempts, error)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the URL's host as the TLS server name (SNI and certificate check)."""

    def __init__(self, address: str, port: int, *, server_name: str, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._tls = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def _post(target: WebhookTarget, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """One POST to the target's checked address; its status. http.client follows no redirect."""
    address = str(target.address)
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = _PinnedHTTPSConnection(address, target.port, server_name=target.host, timeout=timeout_s,
                                            context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(address, target.port, timeout=timeout_s)
    try:
        connection.request("POST", target.path, body=body, headers={**headers, "Host": target.host_header})
        return connection.getresponse().status
    finally:
        connection.close()


# --- firing once per batch -----------------------------------------------------------------------------------


def batch_payload(summary: queries.BatchSummary) -> dict[str, Any]:
    return {
        "event": EVENT,
        "batch": summary.batch,
        "total": summary.total,
        "counts": summary.counts,
        "mean_scores": {a: s.mean for a, s in summary.stats.aspects.items()},
        "stand_in_model": summary.stats.stand_in,
    }


def fire_if_batch_complete(db: Database, settings: Settings, batch: str | None, *, background: bool = True,
                           after_job_end: bool = False) -> threading.Thread | None:
    """Claim and send the batch's webhook if this call saw the batch complete; never raises.

    `after_job_end`: the caller is a worker whose job end saw the webhook due in its own transaction
    (db.queries.batch_webhook_due), so the claim need not wait for other ends in flight (each checks for
    itself). Every other caller (a registration, a cancel) waits for them (db.queries.claim_batch_webhook).
    Returns the delivery thread (when one was started in the background), mostly for tests to join.
    """
    if not batch:
        return None
    at = utcnow()  # the same stamp if the claim runs again: a first run that won, unheard, still counts

    def claim(session: Session) -> tuple[str | None, queries.BatchSummary | None]:
        url = queries.claim_batch_webhook(session, batch, at=at, wait_for_ends=not after_job_end)
        return url, (queries.batch_summary(session, batch) if url else None)

    try:
        url, summary = db.run(claim)
    except Exception:  # noqa: BLE001 - a webhook must never fail the job that completed the batch
        log.exception("could not check batch %s for completion", batch)
        return None
    if url is None or summary is None:
        return None
    body = json.dumps(batch_payload(summary), sort_keys=True).encode()

    def send() -> None:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        outcome = deliver(url, body, secret=secret, max_attempts=settings.webhook_max_attempts,
                          timeout_s=settings.webhook_timeout_s, policy=WebhookPolicy.of(settings))
        if outcome.error:
            log.warning("batch %s webhook failed after %d attempts: %s", batch, outcome.attempts, outcome.error)
        try:  # the same values if it runs twice
            db.run(lambda session: queries.record_webhook_delivery(session, batch, attempts=outcome.attempts,
                                                                   error=outcome.error))
        except Exception:  # noqa: BLE001
            log.exception("could not record the webhook delivery of batch %s", batch)

    if not background:
        send()
        return None
    # Not a daemon: a stopping process still finishes (bounded) delivery attempts it has claimed.
    thread = threading.Thread(target=send, name=f"webhook-{batch[:40]}")
    thread.start()
    return thread
