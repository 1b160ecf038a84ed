// Contract app, v2-style API (`AppServer` subclass): the OFFICIAL @mentra/sdk of $SDK_DIR driven by
// detector-app's cloud simulator. Runs the 2.1.x lines under Node and 3.0.0-hono.8 under Bun (3.x imports
// hono/bun). Exercises what the detector miniapp relies on: webhook -> init/ack -> subscription ->
// camera.startStream({rtmpUrl}) -> status "active" -> layouts.showTextWall -> audio.speak -> stopStream.
// Progress lines start with "CONTRACT " so a person reading the log sees the app's side.
//
// The server listens with the framework directly (express in 2.x, Bun.serve in 3.x) on 127.0.0.1:
// `AppServer.start()` would also call api.mentra.glass (2.x) / registry.npmjs.org (3.x) for a version
// check, and these tests talk to 127.0.0.1 only. In 3.x `start()` does nothing else (it does not listen).
import { pathToFileURL } from "node:url";

const env = (name) => {
  const v = process.env[name];
  if (!v) { console.error(`missing env ${name}`); process.exit(2); }
  return v;
};
const { AppServer } = await import(pathToFileURL(`${env("SDK_DIR")}/sdk.mjs`).href);
const PORT = Number(env("PORT"));
const PACKAGE_NAME = env("PACKAGE_NAME");
const API_KEY = env("MENTRAOS_API_KEY");
const STREAM_URL = env("STREAM_URL");

const mark = (step, extra = {}) => console.log(`CONTRACT ${step} ${JSON.stringify(extra)}`);
const withTimeout = (p, ms, what) => Promise.race([
  p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} timed out`)), ms)),
]);

class ContractApp extends AppServer {
  async onSession(session, sessionId, userId) {
    mark("session", { sessionId, userId, model: session.capabilities?.modelName ?? null });
    let sawActive = false;
    session.camera.onStreamStatus(async (status) => {
      mark("status", { streamId: status.streamId, status: status.status });
      if (status.status === "active" && !sawActive) {
        sawActive = true;
        session.layouts.showTextWall("SDK contract: stream active");
        try {
          const r = await withTimeout(session.audio.speak("I see a cat"), 5000, "speak");
          mark("speak", { success: r.success, duration: r.duration ?? null });
        } catch (e) {
          mark("speak_failed", { error: String(e) });
        }
        await session.camera.stopStream();
        mark("stop_sent");
      }
    });
    // Fire and forget: the webhook is answered once onSession returns (SDK behaviour), and the
    // cloud's 10 s webhook timeout would otherwise retry and start a duplicate session.
    session.camera.startStream({ rtmpUrl: STREAM_URL })
      .then(() => mark("start_sent", { url: STREAM_URL }))
      .catch((e) => mark("start_failed", { error: String(e) }));
  }
}

const server = new ContractApp({ packageName: PACKAGE_NAME, apiKey: API_KEY, port: PORT, healthCheck: true });
if (globalThis.Bun) {
  Bun.serve({ port: PORT, hostname: "127.0.0.1", fetch: server.fetch });
} else {
  server.getExpressApp().listen(PORT, "127.0.0.1");
}
mark("listening", { port: PORT, runtime: globalThis.Bun ? `bun ${Bun.version}` : `node ${process.version}` });
