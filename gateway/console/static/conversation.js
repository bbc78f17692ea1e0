// A logged request's conversation, turn by turn, whatever the endpoint: chat messages, a
// Responses API input (and its instructions), a completion prompt. Shared by the review page
// and the row view; every value is text, never HTML.

function partText(part) {
  if (typeof part === "string") return part;
  if (typeof part?.text === "string") return part.text;
  if (typeof part?.refusal === "string") return part.refusal;
  return `[${part?.type ?? "part"}]`;
}

function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map(partText).join("\n");
  return JSON.stringify(content);
}

function messageText(message) {
  const lines = [contentText(message.content)];
  for (const call of Array.isArray(message.tool_calls) ? message.tool_calls : []) {
    lines.push(`→ ${call.function?.name ?? call.type ?? "tool"}(${call.function?.arguments ?? ""})`);
  }
  if (message.type === "function_call") lines.push(`→ ${message.name}(${message.arguments ?? ""})`);
  if (message.type === "function_call_output") lines.push(contentText(message.output));
  return lines.filter(Boolean).join("\n");
}

// Every turn of the logged request (chat messages, a Responses API input, a completion
// prompt), or null when the payload was not stored.
export function turns(payload) {
  if (!payload || typeof payload !== "object") return null;
  if (Array.isArray(payload.messages)) {
    return payload.messages.map((m) => ({ role: m.role ?? "?", text: messageText(m) }));
  }
  const found = [];
  if (typeof payload.instructions === "string") found.push({ role: "instructions", text: payload.instructions });
  if (typeof payload.input === "string") found.push({ role: "user", text: payload.input });
  if (Array.isArray(payload.input)) {
    found.push(...payload.input.map((item) => ({ role: item.role ?? item.type ?? "?", text: messageText(item) })));
  }
  if (payload.prompt !== undefined && payload.prompt !== null) {
    found.push({ role: "prompt", text: Array.isArray(payload.prompt) ? payload.prompt.join("\n") : String(payload.prompt) });
  }
  return found.length ? found : null;
}
