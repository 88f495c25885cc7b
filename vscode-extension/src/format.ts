/** Small number formats shared by the Agents view, the status bar and the Trace channel. */

/** 950 -> "950", 12_345 -> "12.3k", 2_000_000 -> "2M". */
export function compactCount(n: number): string {
  const abs = Math.abs(n);
  const cut = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(1).replace(/\.0$/, ""));
  if (abs >= 1e9) return cut(n / 1e9) + "G";
  if (abs >= 1e6) return cut(n / 1e6) + "M";
  if (abs >= 1e3) return cut(n / 1e3) + "k";
  return String(Math.round(n));
}

/** Dollars with enough digits to see an agent's spend: $0.0012, $1.25. */
export function dollars(usd: number): string {
  if (usd !== 0 && Math.abs(usd) < 1) return "$" + usd.toFixed(4);
  return "$" + usd.toFixed(2);
}

/** Text cut to `max` characters on one line, with an ellipsis when cut. */
export function oneLine(text: string, max: number): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length <= max ? flat : flat.slice(0, Math.max(0, max - 1)) + "…";
}

/** Seconds as "42s", "3m 5s", "2h 10m". */
export function duration(s: number): string {
  const total = Math.max(0, Math.round(s));
  if (total < 60) return `${total}s`;
  if (total < 3600) return `${Math.floor(total / 60)}m ${total % 60}s`;
  return `${Math.floor(total / 3600)}h ${Math.floor((total % 3600) / 60)}m`;
}
