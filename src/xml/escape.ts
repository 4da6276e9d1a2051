const ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  "'": '&apos;',
  '"': '&quot;',
};

/** Escapes a string for use in XML text or a quoted attribute value. */
export function escapeXml(value: string): string {
  return value.replace(/[&<>'"]/g, (c) => ESCAPES[c] ?? c);
}

/** Renders `name='value'` pairs, skipping undefined values. */
export function renderAttrs(attrs: Readonly<Record<string, string | undefined>>): string {
  let out = '';
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined) out += ` ${name}='${escapeXml(value)}'`;
  }
  return out;
}
