// A word-level diff of two answers: the common prefix and suffix are trimmed, the middle is
// aligned by longest common subsequence (or marked whole when it is too long to align).

const MAX_CELLS = 400000;

function tokens(text) {
  return (text ?? "").split(/(\s+)/).filter((part) => part !== "");
}

// Returns [teacherParts, studentParts]; each part is {text, changed}.
export function wordDiff(teacher, student) {
  const a = tokens(teacher), b = tokens(student);
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head &&
         a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const midA = a.slice(head, a.length - tail), midB = b.slice(head, b.length - tail);
  const [flagsA, flagsB] = align(midA, midB);
  const left = [], right = [];
  const push = (parts, text, changed) => {
    const last = parts[parts.length - 1];
    if (last && last.changed === changed) last.text += text;
    else parts.push({ text, changed });
  };
  a.slice(0, head).forEach((t) => { push(left, t, false); push(right, t, false); });
  midA.forEach((t, i) => push(left, t, flagsA[i]));
  midB.forEach((t, i) => push(right, t, flagsB[i]));
  a.slice(a.length - tail).forEach((t) => { push(left, t, false); push(right, t, false); });
  return [left, right];
}

// Per token: true when it is not in the longest common subsequence (whitespace never flagged
// on its own, so a changed word reads as one highlight).
function align(a, b) {
  if (a.length === 0 || b.length === 0 || a.length * b.length > MAX_CELLS) {
    return [a.map((t) => /\S/.test(t)), b.map((t) => /\S/.test(t))];
  }
  const n = a.length, m = b.length;
  const table = new Array(n + 1);
  for (let i = 0; i <= n; i++) table[i] = new Uint32Array(m + 1);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
    }
  }
  const flagsA = new Array(n).fill(true), flagsB = new Array(m).fill(true);
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { flagsA[i++] = false; flagsB[j++] = false; }
    else if (table[i + 1][j] >= table[i][j + 1]) i++;
    else j++;
  }
  a.forEach((t, k) => { if (!/\S/.test(t)) flagsA[k] = false; });
  b.forEach((t, k) => { if (!/\S/.test(t)) flagsB[k] = false; });
  return [flagsA, flagsB];
}
