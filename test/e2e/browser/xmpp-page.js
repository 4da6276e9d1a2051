/**
 * A minimal XMPP-over-WebSocket client (RFC 7395) with XEP-0198 resumption, in plain browser
 * JavaScript (no bundler, no library): what a web chat client does, small enough to read whole.
 * test/e2e/browser.test.ts loads it in headless Chromium and drives it through `window.xmppPage`;
 * every method returns plain JSON-able values.
 *
 *   await xmppPage.login({ url, domain, username, password, resource })  // → { jid, smId }
 *   await xmppPage.waitForMessages(1)
 *   await xmppPage.resume({ url, domain, username, password })           // → { name, h, previd }
 *   xmppPage.sendMessage(to, body, id); xmppPage.state(); await xmppPage.close();
 */
'use strict';

(() => {
  const NS = {
    framing: 'urn:ietf:params:xml:ns:xmpp-framing',
    client: 'jabber:client',
    stream: 'http://etherx.jabber.org/streams',
    sasl: 'urn:ietf:params:xml:ns:xmpp-sasl',
    bind: 'urn:ietf:params:xml:ns:xmpp-bind',
    sm: 'urn:xmpp:sm:3',
    delay: 'urn:xmpp:delay',
  };
  // XEP-0198 §4: only these count towards h.
  const STANZAS = new Set(['message', 'presence', 'iq']);
  const DEFAULT_TIMEOUT_MS = 5000;
  const SM_MODULUS = 2 ** 32;

  function escapeXml(text) {
    return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
  }

  /** SASL PLAIN's message (RFC 4616) in base64, UTF-8 first: btoa() takes only Latin-1. */
  function plainMessage(username, password) {
    const bytes = new TextEncoder().encode(`\u0000${username}\u0000${password}`);
    return btoa(String.fromCharCode(...bytes));
  }

  function is(element, localName, namespace) {
    return element.localName === localName && element.namespaceURI === namespace;
  }

  class XmppPage {
    constructor() {
      /** The current WebSocket; a new one per connection. */
      this.ws = null;
      /** Connections opened so far; each received message records the one it came on. */
      this.connections = 0;
      /** Every element received, as text, on every connection, in order. */
      this.received = [];
      /** Every <message/> received: { connection, id, from, body, delayStamp }. */
      this.messages = [];
      /** How each WebSocket ended: { connection, code, wasClean }. */
      this.closes = [];
      /** What broke a rule (not well-formed, binary): the test asserts there is none. */
      this.errors = [];
      this.smId = null;
      this.jid = null;
      /** XEP-0198 h: stanzas received since <enabled/>, continued after <resumed/>. Kept across connections. */
      this.h = 0;
      this.counting = false;
      this.inbox = [];
      this.waiters = [];
      this.nextId = 1;
    }

    // --- the WebSocket -------------------------------------------------------------------------

    /** RFC 7395 §3.1: a WebSocket with subprotocol 'xmpp'. */
    connect(url) {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, 'xmpp');
        const connection = ++this.connections;
        this.ws = ws;
        this.inbox = [];
        // XEP-0198: counting starts again with <enabled/> or <resumed/> on the new stream.
        this.counting = false;
        ws.onopen = () => {
          if (ws.protocol !== 'xmpp') reject(new Error(`the server chose subprotocol '${ws.protocol}', not 'xmpp'`));
          else resolve();
        };
        ws.onmessage = (event) => this.onMessage(event.data, connection);
        ws.onerror = () => reject(new Error(`the WebSocket to ${url} failed`));
        ws.onclose = (event) => {
          this.closes.push({ connection, code: event.code, wasClean: event.wasClean });
          reject(new Error(`the WebSocket to ${url} closed (${event.code}) before it opened`));
          if (this.ws === ws) this.failWaiters(`the WebSocket closed (${event.code})`);
        };
      });
    }

    send(xml) {
      if (this.ws === null || this.ws.readyState !== WebSocket.OPEN)
        throw new Error(`cannot send ${xml.slice(0, 80)}: the WebSocket is not open`);
      this.ws.send(xml);
    }

    onMessage(data, connection) {
      if (typeof data !== 'string') {
        this.errors.push('a binary message: RFC 7395 §3.2 allows only text');
        return;
      }
      // RFC 7395 §3.3.3: every message is one standalone element.
      const doc = new DOMParser().parseFromString(data, 'text/xml');
      if (doc.getElementsByTagName('parsererror').length > 0) {
        this.errors.push(`not well-formed: ${data.slice(0, 200)}`);
        return;
      }
      const element = doc.documentElement;
      this.received.push(data);
      if (is(element, 'r', NS.sm)) {
        // XEP-0198 §4: answer an ack request with the number of stanzas handled.
        this.send(`<a xmlns='${NS.sm}' h='${this.h}'/>`);
        return;
      }
      if (is(element, 'enabled', NS.sm)) {
        this.h = 0;
        this.counting = true;
      } else if (is(element, 'resumed', NS.sm)) {
        // h goes on from the value sent in <resume/>.
        this.counting = true;
      } else if (this.counting && element.namespaceURI === NS.client && STANZAS.has(element.localName)) {
        this.h = (this.h + 1) % SM_MODULUS;
      }
      if (is(element, 'message', NS.client)) {
        const body = element.getElementsByTagNameNS(NS.client, 'body')[0];
        const delay = element.getElementsByTagNameNS(NS.delay, 'delay')[0];
        this.messages.push({
          connection,
          id: element.getAttribute('id'),
          from: element.getAttribute('from'),
          body: body === undefined ? null : body.textContent,
          delayStamp: delay === undefined ? null : delay.getAttribute('stamp'),
        });
      }
      const waiter = this.waiters.find((w) => w.predicate(element));
      if (waiter === undefined) {
        this.inbox.push(element);
        return;
      }
      clearTimeout(waiter.timer);
      this.waiters = this.waiters.filter((w) => w !== waiter);
      waiter.resolve(element);
    }

    /** The first element (inbox first) that satisfies `predicate`, or an error naming `what` after `timeoutMs`. */
    expect(predicate, what, timeoutMs = DEFAULT_TIMEOUT_MS) {
      const index = this.inbox.findIndex(predicate);
      if (index >= 0) return Promise.resolve(this.inbox.splice(index, 1)[0]);
      return new Promise((resolve, reject) => {
        const waiter = {
          predicate,
          resolve,
          reject: (reason) => reject(new Error(`expected ${what}: ${reason}; last received: ${this.received.slice(-3).join(' ')}`)),
          timer: setTimeout(() => {
            this.waiters = this.waiters.filter((w) => w !== waiter);
            waiter.reject(`timed out after ${timeoutMs} ms`);
          }, timeoutMs),
        };
        this.waiters.push(waiter);
      });
    }

    failWaiters(reason) {
      for (const waiter of this.waiters) {
        clearTimeout(waiter.timer);
        waiter.reject(reason);
      }
      this.waiters = [];
    }

    // --- the stream -----------------------------------------------------------------------------

    /** RFC 7395 §3.4: <open/>, the server's <open/>, then its features. */
    async openStream(domain) {
      this.send(`<open xmlns='${NS.framing}' to='${escapeXml(domain)}' version='1.0'/>`);
      await this.expect((el) => is(el, 'open', NS.framing), "the server's <open/>");
      return this.expect((el) => is(el, 'features', NS.stream), '<stream:features/>');
    }

    /** SASL PLAIN, then the stream restart (RFC 7395 §3.7: a new <open/>, no WebSocket reconnection). */
    async authenticate(domain, username, password) {
      this.send(`<auth xmlns='${NS.sasl}' mechanism='PLAIN'>${plainMessage(username, password)}</auth>`);
      const outcome = await this.expect(
        (el) => el.namespaceURI === NS.sasl && (el.localName === 'success' || el.localName === 'failure'),
        'SASL <success/>',
      );
      if (outcome.localName !== 'success') throw new Error(`SASL PLAIN failed: ${new XMLSerializer().serializeToString(outcome)}`);
      return this.openStream(domain);
    }

    async bind(resource) {
      const id = `bind-${this.nextId++}`;
      this.send(
        `<iq xmlns='${NS.client}' type='set' id='${id}'><bind xmlns='${NS.bind}'><resource>${escapeXml(resource)}</resource></bind></iq>`,
      );
      const result = await this.expect((el) => is(el, 'iq', NS.client) && el.getAttribute('id') === id, 'the bind result');
      const jid = result.getElementsByTagNameNS(NS.bind, 'jid')[0];
      if (result.getAttribute('type') !== 'result' || jid === undefined)
        throw new Error(`bind failed: ${new XMLSerializer().serializeToString(result)}`);
      return jid.textContent;
    }

    /** Connects, authenticates, binds and enables stream management with resumption. */
    async login({ url, domain, username, password, resource }) {
      await this.connect(url);
      await this.openStream(domain);
      await this.authenticate(domain, username, password);
      this.jid = await this.bind(resource);
      this.send(`<enable xmlns='${NS.sm}' resume='true'/>`);
      const answer = await this.expect(
        (el) => el.namespaceURI === NS.sm && (el.localName === 'enabled' || el.localName === 'failed'),
        '<enabled/>',
      );
      if (answer.localName !== 'enabled') throw new Error(`stream management refused: ${new XMLSerializer().serializeToString(answer)}`);
      this.smId = answer.getAttribute('id');
      return { jid: this.jid, smId: this.smId };
    }

    /** XEP-0198 §5: a new connection, authentication, then <resume previd h/> with the stored id and h. */
    async resume({ url, domain, username, password }) {
      if (this.smId === null) throw new Error('nothing to resume: no <enabled id/> was received');
      await this.connect(url);
      await this.openStream(domain);
      await this.authenticate(domain, username, password);
      this.send(`<resume xmlns='${NS.sm}' previd='${escapeXml(this.smId)}' h='${this.h}'/>`);
      const answer = await this.expect(
        (el) => el.namespaceURI === NS.sm && (el.localName === 'resumed' || el.localName === 'failed'),
        '<resumed/>',
      );
      return {
        name: answer.localName,
        h: answer.getAttribute('h'),
        previd: answer.getAttribute('previd'),
        xml: new XMLSerializer().serializeToString(answer),
      };
    }

    sendMessage(to, body, id) {
      this.send(
        `<message xmlns='${NS.client}' to='${escapeXml(to)}' type='chat' id='${escapeXml(id)}'><body>${escapeXml(body)}</body></message>`,
      );
    }

    /** Resolves once `count` messages were received in all; the error says how many came. */
    waitForMessages(count, timeoutMs = DEFAULT_TIMEOUT_MS) {
      return new Promise((resolve, reject) => {
        const deadline = Date.now() + timeoutMs;
        const check = () => {
          if (this.messages.length >= count) resolve(this.messages.length);
          else if (Date.now() > deadline)
            reject(
              new Error(
                `expected ${count} messages within ${timeoutMs} ms, got ${this.messages.length}: ${JSON.stringify(this.messages.map((m) => m.body))}`,
              ),
            );
          else setTimeout(check, 20);
        };
        check();
      });
    }

    /** Resolves once the current WebSocket is closed (by either side, or by the network). */
    waitForClose(timeoutMs = DEFAULT_TIMEOUT_MS) {
      return new Promise((resolve, reject) => {
        const deadline = Date.now() + timeoutMs;
        const check = () => {
          if (this.ws === null || this.ws.readyState === WebSocket.CLOSED) resolve(this.closes[this.closes.length - 1] ?? null);
          else if (Date.now() > deadline)
            reject(new Error(`expected the WebSocket to close within ${timeoutMs} ms (readyState ${this.ws.readyState})`));
          else setTimeout(check, 20);
        };
        check();
      });
    }

    /** RFC 7395 §3.6: <close/>, the server's <close/>, then the server closes the WebSocket. */
    async close() {
      this.send(`<close xmlns='${NS.framing}'/>`);
      await this.expect((el) => is(el, 'close', NS.framing), "the server's <close/>");
      return this.waitForClose();
    }

    /** Everything the test asserts on, as JSON. */
    state() {
      return {
        connections: this.connections,
        jid: this.jid,
        smId: this.smId,
        h: this.h,
        readyState: this.ws === null ? null : this.ws.readyState,
        messages: this.messages,
        closes: this.closes,
        errors: this.errors,
        received: this.received.length,
      };
    }
  }

  window.xmppPage = new XmppPage();
})();
