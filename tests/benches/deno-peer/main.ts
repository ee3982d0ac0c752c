// The benchmark's yardstick, not part of the app: session-complete written the way a
// Supabase edge function would be (Deno.serve, postgres-js), calling the same
// `complete_session` SQL function with the same arguments and verifying the same HS256
// access token. It does what the Rust endpoint does per request (token, body checks,
// one statement), so the benchmark can compare runtimes rather than amounts of work.
//
// POST .../chatgpt-chat with `"stream": true` is the streamed chat the same way: the same
// token check, the conversation sent to OPENAI_BASE_URL with `stream: true`, and each
// upstream delta relayed as the Rust endpoint relays it (`data: {"delta": ...}`, a closing
// summary, `[DONE]`), so the benchmark can compare what an open stream costs in memory.
// It does not meter (the Rust endpoint takes and settles a quota around the stream).
//
// Started by tests/benches/libero_bench.rs:
//   deno run --allow-net --allow-env --allow-read main.ts
// with PORT, DATABASE_URL, SUPABASE_JWT_SECRET and OPENAI_BASE_URL in the environment;
// prints "listening" once it serves.

import postgres from "postgres";

const port = Number(Deno.env.get("PORT") ?? "8000");
const openai = Deno.env.get("OPENAI_BASE_URL") ?? "";
const secret = Deno.env.get("SUPABASE_JWT_SECRET") ?? "";
// postgres-js's own defaults (10 connections, named prepared statements cached per
// connection), as an edge function would use it.
const sql = postgres(Deno.env.get("DATABASE_URL") ?? "", { onnotice: () => {} });

const key = await crypto.subtle.importKey(
  "raw",
  new TextEncoder().encode(secret),
  { name: "HMAC", hash: "SHA-256" },
  false,
  ["verify"],
);

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const SLUG = /^[A-Za-z0-9_-]{1,64}$/;

function error(status: number, code: string, message: string): Response {
  return Response.json({ error: { code, message } }, { status });
}

function base64url(text: string): Uint8Array<ArrayBuffer> {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

/** The user id of a valid Supabase access token, or null. */
async function authenticate(header: string | null): Promise<string | null> {
  const match = /^bearer\s+(\S+)\s*$/i.exec(header ?? "");
  if (!match) return null;
  const parts = match[1].split(".");
  if (parts.length !== 3) return null;
  try {
    const head = JSON.parse(new TextDecoder().decode(base64url(parts[0])));
    if (head.alg !== "HS256") return null;
    const signed = new TextEncoder().encode(`${parts[0]}.${parts[1]}`);
    if (!(await crypto.subtle.verify("HMAC", key, base64url(parts[2]), signed))) return null;
    const claims = JSON.parse(new TextDecoder().decode(base64url(parts[1])));
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.exp !== "number" || claims.exp + 30 < now) return null;
    if (typeof claims.nbf === "number" && claims.nbf - 30 > now) return null;
    const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!aud.includes("authenticated") || claims.role !== "authenticated") return null;
    return typeof claims.sub === "string" && UUID.test(claims.sub) ? claims.sub : null;
  } catch {
    return null;
  }
}

/** The upstream's server-sent events relayed as the Rust endpoint relays them. */
function relay(upstream: ReadableStream<Uint8Array>, model: string): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  const send = (value: unknown) => encoder.encode(`data: ${JSON.stringify(value)}\n\n`);
  let buffer = "";
  let usage: unknown = null;
  return upstream.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TransformStream<string, Uint8Array>({
      transform(text, out) {
        buffer += text;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event.startsWith("data: ") ? event.slice(6) : "";
          if (data === "" || data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices?.[0]?.delta?.content;
          if (typeof delta === "string" && delta !== "") out.enqueue(send({ delta }));
        }
      },
      flush(out) {
        out.enqueue(send({ done: true, model, usage }));
        out.enqueue(encoder.encode("data: [DONE]\n\n"));
      },
    }),
  );
}

async function chat(req: Request): Promise<Response> {
  let body;
  try {
    body = await req.json();
  } catch {
    return error(400, "invalid_json", "The body is not JSON.");
  }
  const messages = Array.isArray(body?.messages) ? body.messages : [];
  if (messages.length === 0 || body.stream !== true) return error(400, "invalid_field", "messages, stream");
  const model = "gpt-4o-mini";
  const upstream = await fetch(`${openai}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", "authorization": "Bearer sk-bench" },
    body: JSON.stringify({ model, messages, max_tokens: 500, stream: true, stream_options: { include_usage: true } }),
  });
  if (!upstream.ok || !upstream.body) return error(502, "ai_unavailable", `upstream ${upstream.status}`);
  return new Response(relay(upstream.body, model), {
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
  });
}

Deno.serve({ port, hostname: "127.0.0.1", onListen: () => console.log("listening") }, async (req) => {
  if (req.method !== "POST") return error(405, "method_not_allowed", "Use POST.");
  const user = await authenticate(req.headers.get("authorization"));
  if (!user) return error(401, "invalid_token", "A valid access token is required.");
  if (new URL(req.url).pathname.endsWith("/chatgpt-chat")) return chat(req);
  let body;
  try {
    body = await req.json();
  } catch {
    return error(400, "invalid_json", "The body is not JSON.");
  }
  const { session_id, ego_state, action, duration_seconds, protocol_id, started_at } = body ?? {};
  if (typeof session_id !== "string" || !UUID.test(session_id)) return error(400, "invalid_field", "session_id");
  if (typeof ego_state !== "string" || !SLUG.test(ego_state)) return error(400, "invalid_field", "ego_state");
  if (action != null && (typeof action !== "string" || action.length < 1 || action.length > 64)) {
    return error(400, "invalid_field", "action");
  }
  if (!Number.isInteger(duration_seconds) || duration_seconds < 0 || duration_seconds > 14400) {
    return error(400, "invalid_field", "duration_seconds");
  }
  if (protocol_id != null && (typeof protocol_id !== "string" || !UUID.test(protocol_id))) {
    return error(400, "invalid_field", "protocol_id");
  }
  const startedMs = started_at == null ? null : Date.parse(started_at);
  if (startedMs !== null && Number.isNaN(startedMs)) return error(400, "invalid_field", "started_at");
  // The same fingerprint as libero_shared::economy::SessionCompletion::fingerprint.
  let fingerprint = `v1|${ego_state}|${action ?? ""}|${duration_seconds}|${protocol_id ?? ""}`;
  if (startedMs !== null) fingerprint += `|started_at_ms=${startedMs}`;
  try {
    const [row] = await sql`
      select public.complete_session(${user}::uuid, ${session_id}::uuid, ${ego_state}, ${action ?? null},
             ${duration_seconds}::int4, ${protocol_id ?? null}::uuid, ${fingerprint},
             to_timestamp(${startedMs}::int8 / 1000.0)) as result`;
    const { outcome, ...document } = row.result;
    if (outcome === "created" || outcome === "replayed") return Response.json(document);
    if (outcome === "conflict") return error(409, "session_conflict", "Session id reused with other details.");
    return error(400, "invalid_field", String(outcome));
  } catch (e) {
    console.error(`complete_session: ${e instanceof Error ? e.message : e}`);
    return error(503, "database_unavailable", "The session could not be recorded.");
  }
});
