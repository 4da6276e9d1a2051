/*
 * A libstrophe client driven over stdin/stdout by test/e2e/libstrophe.test.ts (via
 * test/support/child-client.ts). Built by the test against Debian 12's libstrophe 0.12:
 *
 *   gcc -DLIBSTROPHE_VERSION='"0.12.2"' -o strophe_client strophe_client.c \
 *       $(pkg-config --cflags --libs libstrophe)
 *
 * It logs in, lets libstrophe enable XEP-0198 stream management with resumption (libstrophe does
 * it by itself after binding when the server offers urn:xmpp:sm:3), sends initial presence, and
 * when its connection drops without a stream close it reconnects after --reconnect-delay-ms the
 * way libstrophe documents: xmpp_conn_get_sm_state() from the dead connection,
 * xmpp_conn_set_sm_state() on a fresh one, connect; libstrophe then sends <resume/> and resends
 * what the server had not acknowledged. TLS certificates are not verified (the proxy's is
 * self-signed): XMPP_CONN_FLAG_TRUST_TLS.
 *
 * libstrophe 0.12 calls no user handler for <resumed/>, <failed/> or the SASL exchange (user
 * handlers only fire once authenticated, and a resume completes inside its own handler), so those
 * events are read off its debug log, which carries every element sent ("SENT: ...") and
 * received ("RECV: ..."). The whole log goes to stderr.
 *
 * stdin, one command a line:
 *   send <to> <id> <body...>   a chat message
 *   quit                        closes the stream and exits (so does the end of stdin)
 *
 * stdout, one JSON object a line, with "event":
 *   ready {library, version}, authenticated {mechanism}, session_start {jid}, sm_enabled {id, resume},
 *   resumed {h}, sm_failed {xml}, message {from, type, id, body, delay}, disconnected {reason},
 *   reconnecting, closed, error {message}.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <strophe.h>

#ifndef LIBSTROPHE_VERSION
#error "build with -DLIBSTROPHE_VERSION='\"<pkg-config --modversion libstrophe>\"'"
#endif

#define NS_DELAY "urn:xmpp:delay"
#define LINE_MAX_BYTES 8192
#define LOOP_TIMEOUT_MS 10

struct client {
    xmpp_ctx_t *ctx;
    xmpp_conn_t *conn;
    const char *jid;
    const char *password;
    const char *host;
    unsigned short port;
    int direct_tls;
    long reconnect_delay_ms;
    /* when to reconnect (CLOCK_MONOTONIC ms); 0 when none is due */
    long long reconnect_at_ms;
    /* a <resumed/> was received on the current connection */
    int resumed;
    int quitting;
    int done;
    char mechanism[64];
    char line[LINE_MAX_BYTES];
    size_t line_len;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- JSON lines on stdout ---------------------------------------------------------------- */

static void json_string(const char *s)
{
    const unsigned char *p;

    if (!s) {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    for (p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void emit_begin(const char *event)
{
    fputs("{\"event\":", stdout);
    json_string(event);
}

static void emit_string(const char *key, const char *value)
{
    putchar(',');
    json_string(key);
    putchar(':');
    json_string(value);
}

static void emit_raw(const char *key, const char *value)
{
    putchar(',');
    json_string(key);
    printf(":%s", value);
}

static void emit_end(void)
{
    puts("}");
    fflush(stdout);
}

static void emit_simple(const char *event)
{
    emit_begin(event);
    emit_end();
}

static void emit_error(const char *message)
{
    emit_begin("error");
    emit_string("message", message);
    emit_end();
}

/* ---- what libstrophe logs ------------------------------------------------------------------ */

/* Copies the value of attribute `name` (serialised by libstrophe as name="value") into `out`. */
static int attribute_of(const char *xml, const char *name, char *out, size_t out_size)
{
    char pattern[64];
    const char *start, *end;
    size_t len;

    snprintf(pattern, sizeof(pattern), " %s=\"", name);
    start = strstr(xml, pattern);
    if (!start)
        return 0;
    start += strlen(pattern);
    end = strchr(start, '"');
    if (!end)
        return 0;
    len = (size_t)(end - start);
    if (len >= out_size)
        len = out_size - 1;
    memcpy(out, start, len);
    out[len] = '\0';
    return 1;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void on_log(void *userdata, xmpp_log_level_t level, const char *area, const char *msg)
{
    static const char *const levels[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    struct client *c = userdata;
    char h[16];

    fprintf(stderr, "%s %s: %s\n", levels[level], area, msg);

    if (starts_with(msg, "SENT: <auth ")) {
        if (!attribute_of(msg, "mechanism", c->mechanism, sizeof(c->mechanism)))
            strcpy(c->mechanism, "?");
    } else if (starts_with(msg, "RECV: <success")) {
        emit_begin("authenticated");
        emit_string("mechanism", c->mechanism);
        emit_end();
    } else if (starts_with(msg, "RECV: <resumed") && strstr(msg, XMPP_NS_SM)) {
        c->resumed = 1;
        emit_begin("resumed");
        emit_raw("h", attribute_of(msg, "h", h, sizeof(h)) ? h : "null");
        emit_end();
    } else if (starts_with(msg, "RECV: <failed") && strstr(msg, XMPP_NS_SM)) {
        emit_begin("sm_failed");
        emit_string("xml", msg + strlen("RECV: "));
        emit_end();
    }
}

/* ---- stanza handlers ---------------------------------------------------------------------- */

static int on_message(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    struct client *c = userdata;
    xmpp_stanza_t *delay;
    char *body;

    (void)conn;
    body = xmpp_message_get_body(stanza);
    delay = xmpp_stanza_get_child_by_name_and_ns(stanza, "delay", NS_DELAY);
    emit_begin("message");
    emit_string("from", xmpp_stanza_get_from(stanza));
    emit_string("type", xmpp_stanza_get_type(stanza));
    emit_string("id", xmpp_stanza_get_id(stanza));
    emit_string("body", body);
    emit_string("delay", delay ? xmpp_stanza_get_attribute(delay, "stamp") : NULL);
    emit_end();
    if (body)
        xmpp_free(c->ctx, body);
    return 1;
}

static int on_sm_enabled(xmpp_conn_t *conn, xmpp_stanza_t *stanza, void *userdata)
{
    const char *resume = xmpp_stanza_get_attribute(stanza, "resume");

    (void)conn;
    (void)userdata;
    emit_begin("sm_enabled");
    emit_string("id", xmpp_stanza_get_attribute(stanza, "id"));
    emit_raw("resume", resume && (strcmp(resume, "true") == 0 || strcmp(resume, "1") == 0) ? "true" : "false");
    emit_end();
    return 1;
}

/* ---- connection --------------------------------------------------------------------------- */

static void on_connection(xmpp_conn_t *conn, xmpp_conn_event_t status, int error, xmpp_stream_error_t *stream_error, void *userdata)
{
    struct client *c = userdata;
    xmpp_stanza_t *presence;
    char reason[256];

    if (status == XMPP_CONN_CONNECT) {
        /* After <resumed/> the session goes on: no new presence. */
        if (c->resumed)
            return;
        emit_begin("session_start");
        emit_string("jid", xmpp_conn_get_bound_jid(conn));
        emit_end();
        presence = xmpp_presence_new(c->ctx);
        xmpp_send(conn, presence);
        xmpp_stanza_release(presence);
        return;
    }
    if (c->quitting) {
        emit_simple("closed");
        c->done = 1;
        return;
    }
    if (stream_error)
        snprintf(reason, sizeof(reason), "stream error %d: %s", stream_error->type, stream_error->text ? stream_error->text : "");
    else if (error)
        snprintf(reason, sizeof(reason), "%s", strerror(error));
    else
        snprintf(reason, sizeof(reason), "%s", status == XMPP_CONN_FAIL ? "connection failed" : "disconnected");
    emit_begin("disconnected");
    emit_string("reason", reason);
    emit_end();
    c->reconnect_at_ms = now_ms() + c->reconnect_delay_ms;
}

static xmpp_conn_t *new_connection(struct client *c)
{
    xmpp_conn_t *conn = xmpp_conn_new(c->ctx);

    xmpp_conn_set_flags(conn, XMPP_CONN_FLAG_TRUST_TLS | (c->direct_tls ? XMPP_CONN_FLAG_LEGACY_SSL : XMPP_CONN_FLAG_MANDATORY_TLS));
    xmpp_conn_set_jid(conn, c->jid);
    xmpp_conn_set_pass(conn, c->password);
    xmpp_handler_add(conn, on_message, NULL, "message", NULL, c);
    xmpp_handler_add(conn, on_sm_enabled, XMPP_NS_SM, "enabled", NULL, c);
    return conn;
}

static void connect_now(struct client *c)
{
    c->resumed = 0;
    c->reconnect_at_ms = 0;
    if (xmpp_connect_client(c->conn, c->host, c->port, on_connection, c) != XMPP_EOK) {
        emit_error("xmpp_connect_client failed");
        c->reconnect_at_ms = now_ms() + c->reconnect_delay_ms;
    }
}

static void reconnect(struct client *c)
{
    xmpp_sm_state_t *sm_state = xmpp_conn_get_sm_state(c->conn);

    xmpp_conn_release(c->conn);
    c->conn = new_connection(c);
    if (sm_state && xmpp_conn_set_sm_state(c->conn, sm_state) != XMPP_EOK) {
        emit_error("xmpp_conn_set_sm_state failed");
        xmpp_free_sm_state(sm_state);
    }
    emit_simple("reconnecting");
    connect_now(c);
}

/* ---- commands ----------------------------------------------------------------------------- */

static void quit(struct client *c)
{
    if (c->quitting)
        return;
    c->quitting = 1;
    if (xmpp_conn_is_disconnected(c->conn)) {
        emit_simple("closed");
        c->done = 1;
    } else {
        xmpp_disconnect(c->conn);
    }
}

static void command(struct client *c, char *line)
{
    char *to, *id, *body, *save = NULL;
    char *verb = strtok_r(line, " ", &save);
    xmpp_stanza_t *msg;

    if (verb && strcmp(verb, "send") == 0) {
        to = strtok_r(NULL, " ", &save);
        id = strtok_r(NULL, " ", &save);
        body = save;
        if (!to || !id || !body || !*body) {
            emit_error("usage: send <to> <id> <body>");
            return;
        }
        msg = xmpp_message_new(c->ctx, "chat", to, id);
        xmpp_message_set_body(msg, body);
        xmpp_send(c->conn, msg);
        xmpp_stanza_release(msg);
    } else if (verb && strcmp(verb, "quit") == 0) {
        quit(c);
    } else {
        emit_error("unknown command");
    }
}

/* Reads what stdin has and runs every complete line; its end means quit. */
static void read_commands(struct client *c)
{
    char buf[1024];
    ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
    ssize_t i;

    if (n <= 0) {
        if (n < 0 && errno == EINTR)
            return;
        quit(c);
        return;
    }
    for (i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            c->line[c->line_len] = '\0';
            command(c, c->line);
            c->line_len = 0;
        } else if (c->line_len < sizeof(c->line) - 1) {
            c->line[c->line_len++] = buf[i];
        }
    }
}

static void usage(void)
{
    fputs("usage: strophe_client --jid JID --password PASSWORD --host HOST --port PORT "
          "--tls starttls|direct --reconnect-delay-ms MS\n",
          stderr);
    exit(64);
}

int main(int argc, char **argv)
{
    struct client c;
    xmpp_log_t log;
    struct pollfd in = {.fd = STDIN_FILENO, .events = POLLIN};
    const char *tls = NULL;
    int stdin_open = 1;
    int i;

    /* A write to a connection the peer has cut fails with EPIPE, as in every long-running client
     * (profanity ignores SIGPIPE too); by default the signal would kill the process first. */
    signal(SIGPIPE, SIG_IGN);
    memset(&c, 0, sizeof(c));
    c.reconnect_delay_ms = -1;
    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--jid") == 0)
            c.jid = argv[i + 1];
        else if (strcmp(argv[i], "--password") == 0)
            c.password = argv[i + 1];
        else if (strcmp(argv[i], "--host") == 0)
            c.host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            c.port = (unsigned short)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--tls") == 0)
            tls = argv[i + 1];
        else if (strcmp(argv[i], "--reconnect-delay-ms") == 0)
            c.reconnect_delay_ms = atol(argv[i + 1]);
        else
            usage();
    }
    if (i != argc || !c.jid || !c.password || !c.host || !c.port || !tls || c.reconnect_delay_ms < 0 ||
        (strcmp(tls, "starttls") != 0 && strcmp(tls, "direct") != 0))
        usage();
    c.direct_tls = strcmp(tls, "direct") == 0;

    xmpp_initialize();
    log.handler = on_log;
    log.userdata = &c;
    c.ctx = xmpp_ctx_new(NULL, &log);
    c.conn = new_connection(&c);

    emit_begin("ready");
    emit_string("library", "libstrophe");
    emit_string("version", LIBSTROPHE_VERSION);
    emit_end();
    connect_now(&c);

    while (!c.done) {
        if (stdin_open && poll(&in, 1, 0) > 0) {
            if (in.revents & (POLLIN | POLLHUP)) {
                read_commands(&c);
                stdin_open = !c.quitting;
            }
        }
        xmpp_run_once(c.ctx, LOOP_TIMEOUT_MS);
        if (c.reconnect_at_ms && now_ms() >= c.reconnect_at_ms)
            reconnect(&c);
    }

    xmpp_conn_release(c.conn);
    xmpp_ctx_free(c.ctx);
    xmpp_shutdown();
    return 0;
}
