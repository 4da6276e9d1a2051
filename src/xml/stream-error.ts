import type { AppCondition, StreamError } from '../errors.js';
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
  if (error.appCondition !== undefined) children += renderAppCondition(error.appCondition);
  return `<stream:error>${children}</stream:error>`;
}

/** An application-specific condition element (RFC 6120 §4.9.4, §8.3.4), e.g. `<handled-count-too-high/>`. */
export function renderAppCondition(app: AppCondition): string {
  return `<${app.name}${renderAttrs({ xmlns: app.xmlns, ...app.attrs })}/>`;
}
