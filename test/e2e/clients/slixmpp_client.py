"""A slixmpp client driven over stdin/stdout by test/e2e/slixmpp.test.ts (via test/support/child-client.ts).

Run with Debian's /usr/bin/python3 (python3-slixmpp 1.8). It logs in, enables XEP-0198 stream
management with resumption (slixmpp's own xep_0198 plugin), sends initial presence, and when its
connection drops without a stream close it reconnects by itself after --reconnect-delay-ms to the
same address, where slixmpp sends <resume/>. TLS certificates are not verified (the proxy's is
self-signed).

stdin, one command a line:
  send <to> <id> <body...>   a chat message
  inactive, active            XEP-0352 client state (slixmpp's xep_0352 plugin; it sends only where
                              the stream features offered <csi/>)
  quit                        closes the stream and exits (so does the end of stdin)

stdout, one JSON object a line, with "event":
  ready {library, version}, authenticated {mechanism}, session_start {jid}, sm_enabled {id, resume},
  resumed {h}, sm_failed {xml}, message {from, type, id, body, delay}, presence {from, status,
  delay}, csi_enabled, disconnected {reason}, reconnecting, closed, error {message}.
The library's own log goes to stderr.
"""
import argparse
import asyncio
import json
import logging
import ssl
import sys

import slixmpp


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", choices=["starttls", "direct"], required=True)
    parser.add_argument("--reconnect-delay-ms", type=int, required=True)
    return parser.parse_args()


class Client(slixmpp.ClientXMPP):
    def __init__(self, args):
        super().__init__(args.jid, args.password)
        self.address = (args.host, args.port)
        self.use_direct_tls = args.tls == "direct"
        self.reconnect_delay = args.reconnect_delay_ms / 1000
        self.quitting = False
        self.done = asyncio.get_event_loop().create_future()
        # The proxy's certificate is self-signed.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        # The address is given: no DNS (slixmpp would otherwise resolve the JID's domain on the
        # default port 5222), and the loopback listener is IPv4 only.
        self.default_port = args.port
        self.use_ipv6 = False
        self.register_plugin("xep_0198")
        self.register_plugin("xep_0203")
        self.register_plugin("xep_0352")
        self.add_event_handler("auth_success", self.on_auth_success)
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("sm_enabled", self.on_sm_enabled)
        self.add_event_handler("session_resumed", self.on_resumed)
        self.add_event_handler("sm_failed", self.on_sm_failed)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence_available", self.on_presence)
        self.add_event_handler("csi_enabled", lambda _features: emit("csi_enabled"))
        self.add_event_handler("disconnected", self.on_disconnected)

    def start(self):
        self.connect(self.address, use_ssl=self.use_direct_tls, force_starttls=not self.use_direct_tls)

    def on_auth_success(self, _stanza):
        emit("authenticated", mechanism=self["feature_mechanisms"].mech.name)

    def on_session_start(self, _event):
        emit("session_start", jid=self.boundjid.full)
        self.send_presence()

    def on_sm_enabled(self, enabled):
        emit("sm_enabled", id=enabled["id"], resume=enabled["resume"])

    def on_resumed(self, resumed):
        emit("resumed", h=resumed["h"])

    def on_sm_failed(self, failed):
        emit("sm_failed", xml=str(failed))

    def on_message(self, msg):
        stamp = msg["delay"]["stamp"]
        emit("message", **{"from": msg["from"].full, "type": msg["type"], "id": msg["id"], "body": msg["body"], "delay": stamp.isoformat() if stamp else None})

    def on_presence(self, presence):
        if presence["from"] == self.boundjid:
            return
        stamp = presence["delay"]["stamp"]
        emit("presence", **{"from": presence["from"].full, "status": presence["status"], "delay": stamp.isoformat() if stamp else None})

    def on_disconnected(self, reason):
        if self.quitting:
            emit("closed")
            if not self.done.done():
                self.done.set_result(None)
            return
        emit("disconnected", reason=str(reason))
        asyncio.get_event_loop().call_later(self.reconnect_delay, self.reconnect_now)

    def reconnect_now(self):
        emit("reconnecting")
        self.start()

    def command(self, line):
        verb, _, rest = line.partition(" ")
        if verb == "send":
            to, msg_id, body = rest.split(" ", 2)
            msg = self.make_message(mto=to, mbody=body, mtype="chat")
            msg["id"] = msg_id
            msg.send()
        elif verb == "inactive":
            self.plugin["xep_0352"].send_inactive()
        elif verb == "active":
            self.plugin["xep_0352"].send_active()
        elif verb == "quit":
            self.quit()
        else:
            emit("error", message=f"unknown command {line!r}")

    def quit(self):
        if self.quitting:
            return
        self.quitting = True
        if self.transport is None:
            self.cancel_connection_attempt()
            emit("closed")
            self.done.set_result(None)
        else:
            self.disconnect(wait=2.0)


async def read_commands(client):
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            client.quit()
            return
        client.command(line.decode().rstrip("\n"))


async def main():
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client(args)
    emit("ready", library="slixmpp", version=slixmpp.__version__)
    client.start()
    commands = asyncio.ensure_future(read_commands(client))
    await client.done
    commands.cancel()


if __name__ == "__main__":
    asyncio.run(main())
