import { StreamError } from '../errors.js';
import { NS } from './namespaces.js';
import { escapeXml, renderAttrs } from './escape.js';

/**
 * The one place that turns a StreamError into what the peer sees: RFC 6120 §4.9.2 syntax,
 * `<stream:error>` with the defined condition, a `<text/>` and an optional application condition.
 */
export function renderStreamError(error: StreamError): string {
  let children = `<${error.condition} xmlns='${NS.streams}'/>`;
  if (error.text !== undefined) {
    children += `<text xmlns='${NS.streams}' xml:lang='en'>${escapeXml(error.text)}</text>`;
  }
  const app = error.appCondition;
  if (app !== undefined) {
    children += `<${app.name}${renderAttrs({ xmlns: app.xmlns, ...app.attrs })}/>`;
  }
  return `<stream:error>${children}</stream:error>`;
}
