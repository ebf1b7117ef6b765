// typage (npm age-encryption) with a custom Identity that asks keyagent's UnwrapFileKey,
// through busctl on the session bus. Usage:
//   node agent_identity.mjs MODULE decrypt IN OUT      (custom identity: the agent)
//   node agent_identity.mjs MODULE encrypt IN OUT RECIPIENT
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

const [modulePath, mode, input, output, recipient] = process.argv.slice(2);
const { Decrypter, Encrypter } = await import(modulePath);

class AgentIdentity {
  unwrapFileKey(stanzas) {
    const args = ["--user", "--json=short", "call", "org.example.KeyAgent",
      "/org/example/KeyAgent", "org.example.KeyAgent", "UnwrapFileKey", "a(sasay)a{sv}",
      String(stanzas.length)];
    for (const s of stanzas) {
      const [type, ...rest] = s.args;
      args.push(type, String(rest.length), ...rest, String(s.body.length),
        ...Array.from(s.body, String));
    }
    args.push("0");
    let out;
    try {
      out = execFileSync("busctl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      const text = String(e.stderr).trim();
      if (text.includes("matches this file")) return null; // NoMatch: not ours
      throw new Error(text);
    }
    const [key, name] = JSON.parse(out).data;
    process.stderr.write(`unwrapped with agent key ${name}\n`);
    return Uint8Array.from(key);
  }
}

if (mode === "decrypt") {
  const d = new Decrypter();
  d.addIdentity(new AgentIdentity());
  writeFileSync(output, await d.decrypt(readFileSync(input)));
} else {
  const e = new Encrypter();
  e.addRecipient(recipient);
  writeFileSync(output, await e.encrypt(readFileSync(input)));
}
