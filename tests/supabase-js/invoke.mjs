// supabase-js calling the app the way the apps and the server jobs do: `functions.invoke`
// against LIBERO_URL (the app serves /functions/v1/<name>), with Supabase's new API keys.
// Run by tests/tests/supabase_js.rs, which checks the answers; prints one JSON line per
// call: {"call": name, "status": n, "code": error code or null}.
//
// Environment: LIBERO_URL, PUBLISHABLE_KEY, SECRET_KEY, ACCESS_TOKEN (a user's session).
import { createClient } from "@supabase/supabase-js";

const url = process.env.LIBERO_URL;
const publishable = process.env.PUBLISHABLE_KEY;
const secret = process.env.SECRET_KEY;
const accessToken = process.env.ACCESS_TOKEN;

// Newer supabase-js releases send a new-format key only as `apikey`, never as a Bearer
// token, when there is no session; this fetch does the same with the pinned release, so
// both ways a client may call are exercised.
const apikeyOnlyFetch = (input, init = {}) => {
  const headers = new Headers(init.headers);
  const apikey = headers.get("apikey");
  if (apikey && headers.get("authorization") === `Bearer ${apikey}`) headers.delete("authorization");
  return fetch(input, { ...init, headers });
};

// Realtime is never used here; Node 20 has no WebSocket of its own, and supabase-js
// refuses to start without one, so it gets a stand-in that is never opened.
class NoWebSocket {}
const realtime = { transport: NoWebSocket };
const options = { auth: { persistSession: false, autoRefreshToken: false }, realtime };
const clients = {
  // An app without a session: the publishable key only.
  anonymous: createClient(url, publishable, options),
  anonymousApikeyOnly: createClient(url, publishable, { ...options, global: { fetch: apikeyOnlyFetch } }),
  // An app with a signed-in user (the session's access token, as supabase-js sends it).
  signedIn: createClient(url, publishable, { accessToken: async () => accessToken, realtime }),
  // A server job holding a secret key.
  server: createClient(url, secret, options),
  serverApikeyOnly: createClient(url, secret, { ...options, global: { fetch: apikeyOnlyFetch } }),
};

const calls = [
  ["signed_in_session_complete", "signedIn", "session-complete",
    { session_id: crypto.randomUUID(), ego_state: "guardian", duration_seconds: 300 }],
  ["signed_in_insights", "signedIn", "insights", undefined, "GET"],
  ["anonymous_session_complete", "anonymous", "session-complete",
    { session_id: crypto.randomUUID(), ego_state: "guardian", duration_seconds: 300 }],
  ["anonymous_apikey_only_insights", "anonymousApikeyOnly", "insights", undefined, "GET"],
  ["server_reconcile", "server", "stripe-reconcile", { max_events: 1 }],
  ["server_apikey_only_reconcile", "serverApikeyOnly", "stripe-reconcile", { max_events: 1 }],
  ["publishable_reconcile", "anonymous", "stripe-reconcile", { max_events: 1 }],
  ["publishable_apikey_only_reconcile", "anonymousApikeyOnly", "stripe-reconcile", { max_events: 1 }],
  ["signed_in_reconcile", "signedIn", "stripe-reconcile", { max_events: 1 }],
  ["server_session_complete", "server", "session-complete",
    { session_id: crypto.randomUUID(), ego_state: "guardian", duration_seconds: 300 }],
];

for (const [call, client, name, body, method = "POST"] of calls) {
  const { error, response } = await clients[client].functions.invoke(name, { body, method });
  let status = response?.status ?? null;
  let code = null;
  if (error) {
    const context = error.context;
    if (context && typeof context.json === "function") {
      status = context.status;
      code = (await context.json().catch(() => null))?.error?.code ?? null;
    } else {
      code = `client_error: ${error.name}`;
    }
  }
  console.log(JSON.stringify({ call, status, code }));
}
