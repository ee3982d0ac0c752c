"""Upstreams that answer, for scripts/contract.sh's `up` deployment.

One loopback server plays OpenAI, ElevenLabs and Stripe (their paths do not overlap), so
Schemathesis reaches the success answers users get most: streamed chat, scripts,
guidance, speech, transcriptions, Checkout and portal sessions. Stripe keeps state (the
catalog that `libero stripe sync` makes, customers, sessions) so the sync and the
components see one account. Only the standard library: it runs from the tester's venv.

    python3 fake_upstreams.py PORT_FILE   # binds a free loopback port, writes it to PORT_FILE
"""

import itertools
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

# A valid MPEG-1 Layer III frame header (128 kbit/s, 44.1 kHz, no padding: 417 bytes a
# frame), so anything that sniffs the audio finds MP3.
MP3_FRAME = bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(413)
SPEECH = MP3_FRAME * 8


def nested(pairs):
    """Stripe's form encoding (`a[b][0][c]=v`) as nested dicts and lists."""
    root = {}
    for key, value in pairs:
        parts = [key.split("[", 1)[0]] + re.findall(r"\[([^\]]*)\]", key)
        target = root
        for part, following in zip(parts, parts[1:] + [None]):
            if following is None:
                target[part] = value
            else:
                target = target.setdefault(part, {})
    return listify(root)


def listify(value):
    if isinstance(value, dict):
        if value and all(k.isdigit() for k in value):
            return [listify(value[k]) for k in sorted(value, key=int)]
        return {k: listify(v) for k, v in value.items()}
    return value


def typed(value):
    """Form strings as the JSON types Stripe answers with."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if value in ("true", "false"):
        return value == "true"
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value) and len(value) < 16:
        return int(value)
    return value


class Stripe:
    def __init__(self):
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.objects = {"products": {}, "prices": {}, "billing_portal/configurations": {}}

    def new_id(self, prefix):
        return f"{prefix}_contract{next(self.ids):06d}"

    def listing(self, kind, query, url):
        items = sorted(self.objects[kind].values(), key=lambda o: (-o["created"], o["id"]))
        if "product" in query:
            items = [i for i in items if i.get("product") == query["product"][0]]
        if "active" in query:
            items = [i for i in items if i.get("active") == (query["active"][0] == "true")]
        if "lookup_keys[]" in query:
            items = [i for i in items if i.get("lookup_key") in query["lookup_keys[]"]]
        if "starting_after" in query:
            ids = [i["id"] for i in items]
            after = query["starting_after"][0]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit = int(query.get("limit", ["10"])[0])
        page = items[:limit]
        if kind == "prices" and "data.product" in query.get("expand[]", []):
            page = [dict(p, product=self.objects["products"].get(p["product"], p["product"])) for p in page]
        return 200, {"object": "list", "data": page, "has_more": len(items) > limit, "url": url}

    def create(self, kind, form):
        prefix = {"products": "prod", "prices": "price", "billing_portal/configurations": "bpc"}[kind]
        name = {"products": "product", "prices": "price", "billing_portal/configurations": "billing_portal.configuration"}
        obj = {"id": self.new_id(prefix), "object": name[kind], "active": True,
               "created": int(time.time()), "livemode": False, "metadata": {}}
        transfer = form.pop("transfer_lookup_key", False)
        obj.update(form)
        if kind == "prices":
            obj.setdefault("lookup_key", None)
            obj.setdefault("recurring", None)
            obj["type"] = "recurring" if obj["recurring"] else "one_time"
            if transfer and obj["lookup_key"]:
                for other in self.objects["prices"].values():
                    if other["lookup_key"] == obj["lookup_key"]:
                        other["lookup_key"] = None
        self.objects[kind][obj["id"]] = obj
        return 200, obj

    def update(self, kind, object_id, form):
        obj = self.objects[kind].get(object_id)
        if obj is None:
            return 404, {"error": {"type": "invalid_request_error", "message": f"No such object: '{object_id}'"}}
        for key, value in form.items():
            if isinstance(value, dict) and isinstance(obj.get(key), dict):
                obj[key].update(value)
            else:
                obj[key] = value
        return 200, obj

    def handle(self, method, path, query, form, url):
        with self.lock:
            match = re.fullmatch(r"(products|prices|billing_portal/configurations)(?:/([A-Za-z0-9_]+))?", path)
            if match:
                kind, object_id = match.groups()
                if method == "GET" and object_id is None:
                    return self.listing(kind, query, url)
                if method == "GET":
                    obj = self.objects[kind].get(object_id)
                    return (200, obj) if obj else (404, {"error": {"type": "invalid_request_error"}})
                return self.create(kind, form) if object_id is None else self.update(kind, object_id, form)
            if method == "POST" and path == "customers":
                return 200, {"id": self.new_id("cus"), "object": "customer", "email": form.get("email")}
            if method == "POST" and path == "checkout/sessions":
                session = self.new_id("cs_test")
                return 200, {"id": session, "object": "checkout.session", "mode": form.get("mode"),
                             "status": "open", "payment_status": "unpaid",
                             "url": f"https://checkout.stripe.com/c/pay/{session}"}
            if method == "GET" and path.startswith("checkout/sessions/"):
                # A session the customer left open: nothing paid, nothing to credit.
                session = path.split("/")[2]
                return 200, {"id": session, "object": "checkout.session", "status": "open",
                             "payment_status": "unpaid", "client_reference_id": None, "metadata": {},
                             "line_items": {"object": "list", "data": [], "has_more": False}}
            if method == "GET" and path == "events":
                # A quiet account: nothing happened that reconcile would have to heal.
                return 200, {"object": "list", "data": [], "has_more": False, "url": url}
            if method == "POST" and path == "billing_portal/sessions":
                session = self.new_id("bps")
                return 200, {"id": session, "object": "billing_portal.session",
                             "url": f"https://billing.stripe.com/p/session/test_{session}"}
            return 404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized request URL ({method} /v1/{path})"}}


def schema_value(schema, name=""):
    """A value of a Structured Outputs schema: what a model in strict mode sends back."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object":
        return {key: schema_value(sub, key) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        item = schema.get("items", {})
        phases = item.get("properties", {}).get("phase", {}).get("enum")
        if phases:
            return [{"phase": phase, "text": " ".join(["calm"] * 60)} for phase in phases]
        return [schema_value(item) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return "Breathe in slowly and let the shoulders soften." if name != "title" else "Quiet Strength"


def chat_answer(request):
    usage = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}
    if request.get("stream"):
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        chunks += [{"choices": [{"index": 0, "delta": {"content": word}}]} for word in ("Breathe ", "in, ", "slowly.")]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (request.get("stream_options") or {}).get("include_usage"):
            chunks.append({"choices": [], "usage": usage})
        body = "".join(
            f"data: {json.dumps(dict(c, id='chatcmpl-contract', object='chat.completion.chunk', model='gpt-contract'))}\n\n"
            for c in chunks
        ) + "data: [DONE]\n\n"
        return 200, "text/event-stream", body.encode()
    schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("schema")
    content = json.dumps(schema_value(schema)) if schema else "Breathe in slowly, and let the day settle."
    answer = {"id": "chatcmpl-contract", "object": "chat.completion", "model": "gpt-contract",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
              "usage": usage}
    return 200, "application/json", json.dumps(answer).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stripe = Stripe()

    def log_message(self, *args):
        pass

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def json(self, status, value):
        self.answer(status, "application/json", json.dumps(value).encode())

    def body(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        url = urlsplit(self.path)
        body = self.body()
        path = url.path
        if path.startswith("/v1/") and self.headers.get("authorization", "").startswith("Bearer sk_"):
            query = {}
            for key, value in parse_qsl(url.query, keep_blank_values=True):
                query.setdefault(key, []).append(value)
            form = typed(nested(parse_qsl(body.decode(), keep_blank_values=True))) if body else {}
            status, value = self.stripe.handle(method, path[4:], query, form, url.path)
            return self.json(status, value)
        if path == "/v1/chat/completions":
            return self.answer(*chat_answer(json.loads(body or b"{}")))
        if path == "/v1/audio/speech":
            return self.answer(200, "audio/mpeg", SPEECH)
        if path == "/v1/audio/transcriptions":
            return self.json(200, {"text": "Today I felt calm.", "usage": {"type": "duration", "seconds": 3}})
        if re.fullmatch(r"/v1/text-to-speech/[^/]+/stream", path):
            return self.answer(200, "audio/mpeg", SPEECH)
        if path == "/v1/speech-to-text":
            return self.json(200, {"language_code": "en", "language_probability": 0.98, "text": "Today I felt calm."})
        self.json(404, {"error": {"message": f"fake_upstreams: no route for {method} {path}"}})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(sys.argv[1] + ".tmp", "w") as port_file:
        port_file.write(str(server.server_address[1]))
    # Renamed into place: the script never reads a half-written port.
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
