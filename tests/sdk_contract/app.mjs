// Contract app: the OFFICIAL @mentra/sdk (pinned 2.1.29) driven by detector-app's cloud simulator.
// Exercises exactly what the detector miniapp relies on: webhook -> init/ack -> subscription ->
// camera.startStream({rtmpUrl}) -> status "active" -> layouts.showTextWall -> audio.speak -> stopStream.
// Progress lines start with "CONTRACT " so the pytest side can read them from stdout.
import { AppServer } from "@mentra/sdk";

const env = (name) => {
  const v = process.env[name];
  if (!v) { console.error(`missing env ${name}`); process.exit(2); }
  return v;
};
const PORT = Number(env("PORT"));
const PACKAGE_NAME = env("PACKAGE_NAME");
const API_KEY = env("MENTRAOS_API_KEY");
const RTMP_URL = env("RTMP_URL");

const mark = (step, extra = {}) => console.log(`CONTRACT ${step} ${JSON.stringify(extra)}`);
const withTimeout = (p, ms, what) => Promise.race([
  p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} timed out`)), ms)),
]);

class ContractApp extends AppServer {
  async onSession(session, sessionId, userId) {
    mark("session", { sessionId, userId, model: session.capabilities?.modelName ?? null,
                      hasDisplay: session.capabilities?.hasDisplay ?? null });
    let sawActive = false;
    let done = false;
    session.camera.onStreamStatus(async (status) => {
      mark("status", { streamId: status.streamId, status: status.status });
      if (status.status === "active" && !sawActive) {
        sawActive = true;
        session.layouts.showTextWall("SDK contract: stream active");
        mark("text_wall");
        try {
          const r = await withTimeout(session.audio.speak("I see a cat"), 5000, "speak");
          mark("speak", { success: r.success, duration: r.duration ?? null });
        } catch (e) {
          mark("speak_failed", { error: String(e) });
        }
        await session.camera.stopStream();
        mark("stop_sent");
      } else if (status.status === "stopped" && sawActive && !done) {
        done = true;
        mark("done");
      }
    });
    // Fire and forget: the webhook is answered once onSession returns (SDK behaviour), and the
    // cloud's 10 s webhook timeout would otherwise retry and start a duplicate session.
    session.camera.startStream({ rtmpUrl: RTMP_URL })
      .then(() => mark("start_sent", { rtmpUrl: RTMP_URL }))
      .catch((e) => mark("start_failed", { error: String(e) }));
  }

  async onStop(sessionId, userId, reason) {
    mark("stop", { sessionId, userId, reason });
    await super.onStop(sessionId, userId, reason);
  }
}

const server = new ContractApp({ packageName: PACKAGE_NAME, apiKey: API_KEY, port: PORT, healthCheck: true });
server.start().then(() => mark("listening", { port: PORT }));
