"""A small agent on Tether's facade: StartSession, AcquireCredential (waiting
for the user's approval when a policy asks for it), one real SQL query with
the just-in-time credential, EndSession.

Prints one line per step and never prints a token, the agent's assertion or
the credential. Exits 1 with the gRPC status code and the ErrorInfo reason
when Tether refuses (Tether fails closed: any non-OK status means "not
allowed"), 2 on bad settings. Every flag can also be set by the environment
variable named in its help.
"""

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import grpc
import jwt
import psycopg
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# The stubs generated from proto/ (see README.md).
sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))
from tether.facade.v1 import facade_pb2 as pb  # noqa: E402
from tether.facade.v1 import facade_pb2_grpc  # noqa: E402

USER_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TERMINAL = {pb.APPROVAL_STATE_APPROVED, pb.APPROVAL_STATE_DENIED, pb.APPROVAL_STATE_EXPIRED,
            pb.APPROVAL_STATE_CANCELLED, pb.APPROVAL_STATE_FAILED}


class Refused(Exception):
    """Tether said no, or something failed: the agent stops."""


def settings():
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))

    def flag(name, env, help, **kw):
        p.add_argument(name, default=os.environ.get(env, kw.pop("default", None)),
                       help=f"{help} (${env})", **kw)

    flag("--facade", "TETHER_FACADE", "the facade's address, host:port")
    flag("--ca-file", "TETHER_CA_FILE", "the CA that signed the facade's certificate (PEM)")
    flag("--client-cert", "TETHER_CLIENT_CERT", "optional client certificate (PEM), for mTLS")
    flag("--client-key", "TETHER_CLIENT_KEY", "its private key (PEM)")
    flag("--user-token-file", "TETHER_USER_TOKEN_FILE",
         "a file holding the user's access token; or put the token itself in $TETHER_USER_TOKEN")
    flag("--agent-id", "TETHER_AGENT_ID", "the agent id registered with Tether")
    flag("--agent-key", "TETHER_AGENT_KEY", "the agent's private key (PKCS#8 PEM)")
    flag("--agent-key-id", "TETHER_AGENT_KEY_ID", "the registered key's `kid`, if it has several")
    flag("--agent-alg", "TETHER_AGENT_ALG", "the assertion's signing algorithm", default="ES256")
    flag("--token-endpoint", "TETHER_TOKEN_ENDPOINT",
         "the identity exchange's token endpoint URL: the assertion's audience")
    flag("--intent", "TETHER_INTENT", "the declared intent (RFC 9396 authorization_details)",
         default='[{"type":"hr_offboarding","actions":["offboard"],"identifier":"employee/1042"}]')
    flag("--scope", "TETHER_SCOPE", "the scope to ask for (empty: all the user may delegate)",
         default="")
    flag("--action", "TETHER_ACTION", "the action, Type::id", default="Action::offboard")
    flag("--resource", "TETHER_RESOURCE", "the resource, Type::id", default="Employee::1042")
    flag("--profile", "TETHER_PROFILE", "the credential profile", default="hr-write")
    flag("--database-url", "TETHER_DATABASE_URL",
         "the database, without user or password, e.g. postgresql://127.0.0.1:5432/postgres")
    flag("--sql", "TETHER_SQL", "the query to run with the credential",
         default="SELECT count(*) FROM hr.employees")
    flag("--timeout", "TETHER_TIMEOUT", "deadline of each call, seconds", default="10", type=float)
    flag("--approval-timeout", "TETHER_APPROVAL_TIMEOUT",
         "how long to wait for the user's approval, seconds", default="300", type=float)
    args = p.parse_args()
    required = ["facade", "ca_file", "agent_id", "agent_key", "token_endpoint", "database_url"]
    missing = [f"--{n.replace('_', '-')}" for n in required if not getattr(args, n)]
    if missing:
        p.error("missing " + ", ".join(missing))
    if bool(args.client_cert) != bool(args.client_key):
        p.error("--client-cert and --client-key go together")

    def read(path):
        try:
            return Path(path).read_bytes() if path else None
        except OSError as e:
            p.error(f"cannot read {path}: {e.strerror}")

    args.ca, args.cert, args.key = map(read, (args.ca_file, args.client_cert, args.client_key))
    args.agent_pem = read(args.agent_key)
    token = read(args.user_token_file) or os.environ.get("TETHER_USER_TOKEN", "").encode()
    args.user_token = token.decode().strip()
    if not args.user_token:
        p.error("no user token: set --user-token-file or $TETHER_USER_TOKEN")
    return args


def entity(text):
    """`Hr::Employee::1042` -> type `Hr::Employee`, id `1042`."""
    type_, _, id_ = text.rpartition("::")
    return pb.EntityUid(type=type_, id=id_)


def assertion(args):
    """A fresh, single-use RFC 7523 assertion: iss = sub = the agent, aud =
    the token endpoint, a new jti, valid for one minute."""
    now = int(time.time())
    claims = {"iss": args.agent_id, "sub": args.agent_id, "aud": args.token_endpoint,
              "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    headers = {"typ": "JWT", **({"kid": args.agent_key_id} if args.agent_key_id else {})}
    try:
        return jwt.encode(claims, args.agent_pem, algorithm=args.agent_alg, headers=headers)
    except (ValueError, TypeError, jwt.PyJWTError) as e:
        raise Refused(f"agent key: cannot sign with it as {args.agent_alg} ({type(e).__name__})")


def describe(error):
    """`CODE REASON: message` of a failed call (ErrorInfo is a status detail)."""
    reason = "-"
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    return f"{error.code().name} {reason}: {error.details()}"


def call(step, method, request, **kw):
    try:
        return method(request, **kw)
    except grpc.RpcError as e:
        raise Refused(f"{step}: {describe(e)}") from None


def wait_for_approval(gateway, auth, ticket, args):
    """Follows the ticket with WatchApproval until it is terminal (every
    message is a full snapshot); watches again if the stream breaks."""
    deadline = time.monotonic() + args.approval_timeout
    while time.monotonic() < deadline:
        stream = gateway.WatchApproval(pb.WatchApprovalRequest(ticket_id=ticket.ticket_id),
                                       metadata=auth, timeout=deadline - time.monotonic())
        try:
            for message in stream:
                if message.ticket.state in TERMINAL:
                    return message.ticket
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise Refused(f"watch approval: {describe(e)}") from None
            time.sleep(1)
    raise Refused("watch approval: no answer from the user in time")


def acquire(gateway, auth, args):
    request = pb.AcquireCredentialRequest(action=entity(args.action),
                                          resource=entity(args.resource), profile=args.profile)
    for _ in range(2):
        response = call("acquire credential", gateway.AcquireCredential, request,
                        metadata=auth, timeout=args.timeout)
        if response.decision == pb.DECISION_ALLOW:
            return response
        if response.decision != pb.DECISION_APPROVAL_REQUIRED:
            raise Refused(f"acquire credential: {pb.Decision.Name(response.decision)}")
        ticket = response.approval_required.ticket
        message, _, code = ticket.binding_message.rpartition(" Code: ")
        print(f"approval: required by {', '.join(response.policy_ids)}; "
              f"the user's device shows \"{message or ticket.binding_message}\" "
              f"with confirmation code {code or '-'} (ticket {ticket.ticket_id})", flush=True)
        ticket = wait_for_approval(gateway, auth, ticket, args)
        state = pb.ApprovalState.Name(ticket.state).removeprefix("APPROVAL_STATE_")
        print(f"approval: {state}" + (f" ({ticket.state_reason})" if ticket.state_reason else ""),
              flush=True)
        if ticket.state != pb.APPROVAL_STATE_APPROVED:
            raise Refused(f"approval: {state}")
    raise Refused("acquire credential: still waiting for an approval after one was given")


def query(credential, args):
    """Runs the SQL with the throw-away login; errors never show it."""
    db = credential.database
    try:
        with psycopg.connect(args.database_url, user=db.username, password=db.password,
                             connect_timeout=int(args.timeout)) as conn:
            return conn.execute(args.sql).fetchall()
    except psycopg.Error as e:
        text = str(e).replace(db.password, "***").replace(db.username, "***").strip()
        raise Refused(f"sql: {type(e).__name__}: {text}") from None


def work(gateway, auth, args):
    response = acquire(gateway, auth, args)
    lease = response.issued.lease
    print(f"credential: ALLOW by {', '.join(response.policy_ids)}; lease "
          f"{lease.lease_id} ({lease.profile}, {lease.granted_ttl.seconds}s)", flush=True)
    rows = query(response.issued.credential, args)
    print(f"sql: \"{args.sql}\" returned {len(rows)} row(s)"
          + (f", first {tuple(rows[0])}" if rows else ""), flush=True)


def end_session(gateway, auth, args):
    receipt = call("end session", gateway.EndSession,
                   pb.EndSessionRequest(reason="python agent done"),
                   metadata=auth, timeout=args.timeout).receipt
    print(f"session: ended {receipt.session_id}; {len(receipt.revoked_leases)} lease(s) "
          f"revoked, {len(receipt.pending_leases)} pending, "
          f"{len(receipt.cancelled_ticket_ids)} ticket(s) cancelled; "
          f"receipt {receipt.receipt_id}", flush=True)


def run(args):
    """Returns the exit status; raises Refused when the session cannot be
    started or ended."""
    tls = grpc.ssl_channel_credentials(args.ca, args.key, args.cert)
    with grpc.secure_channel(args.facade, tls) as ch:
        gateway = facade_pb2_grpc.AgentGatewayStub(ch)
        session = call("start session", gateway.StartSession, pb.StartSessionRequest(
            user_token=args.user_token, user_token_type=USER_TOKEN_TYPE,
            agent_assertion=assertion(args), intent=args.intent, scope=args.scope),
            timeout=args.timeout)
        print(f"session: started {session.session_id} for {session.user_subject} "
              f"as {session.agent_id}, scope \"{session.scope}\", "
              f"until {session.session_expires_at.ToJsonString()}", flush=True)
        auth = [("authorization", f"Bearer {session.delegated_token}")]
        try:
            work(gateway, auth, args)
            return 0
        except Refused as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        finally:
            # Always end the session: its credentials and approvals go with it.
            end_session(gateway, auth, args)


def main():
    args = settings()
    try:
        sys.exit(run(args))
    except Refused as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
