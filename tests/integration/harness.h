/* Shared helpers for the uproxy integration tests: seeded data streams and
 * hashes, bounded socket I/O, spawning and stopping the real binary, probing
 * its fds, sockets, RSS and CPU time, and echo/sink/source/handler backends.
 * Every wait here is bounded; only processes spawned here are ever signalled. */
#ifndef UPROXY_TEST_HARNESS_H
#define UPROXY_TEST_HARNESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define KIB (1024ULL)
#define MIB (1024ULL * 1024ULL)

/* ---- time ---------------------------------------------------------------- */

uint64_t now_ms(void);
void sleep_ms(unsigned int ms);

/* ---- data: a seekable pseudo-random byte stream and a 64-bit hash -------- */

/* Bytes [off, off + n) of the stream named by seed. */
void fill_random(void *buf, size_t n, uint64_t seed, uint64_t off);

#define HASH64_INIT 0xcbf29ce484222325ULL /* FNV-1a 64 */
uint64_t hash64_update(uint64_t h, const void *buf, size_t n);
uint64_t hash64(const void *buf, size_t n);
/* Hash of the first n bytes of stream seed. */
uint64_t stream_hash(uint64_t seed, uint64_t n);

/* Checks received bytes against the expected stream as they arrive. */
struct stream_check {
	uint64_t seed;
	uint64_t len;     /* bytes fed so far */
	uint64_t hash;    /* hash of the bytes fed */
	int64_t bad_at;   /* offset of the first wrong byte, -1 if none */
};

void check_init(struct stream_check *c, uint64_t seed);
void check_feed(struct stream_check *c, const void *buf, size_t n);

/* ---- sockets --------------------------------------------------------------- */

bool have_ipv6(void);
/* A TCP port that was free on 127.0.0.1 (and ::1 where available). */
uint16_t free_port(void);
int set_nonblock(int fd, bool on);
/* Close with SO_LINGER {1, 0}: the peer gets an RST. */
void close_rst(int fd);
/* Non-blocking connect to the loopback address of family, bounded by
 * timeout_ms; returns a non-blocking fd, or -1 with errno set. */
int tcp_connect(int family, uint16_t port, int timeout_ms);
/* A connected non-blocking socket from src (an address of 127.0.0.0/8 or ::1, port 0) to the
 * loopback port of the same family, for tests of per-client-address rules; asserts, waits at
 * most 2 s. */
int tcp_connect_from(const char *src, uint16_t port);
/* The local port of a connected IPv4 socket; asserts. */
uint16_t sock_local_port(int fd);
/* A connected non-blocking IPv4 socket to 127.0.0.1:port whose SO_RCVBUF was set to rcvbuf
 * before connect (the window scale is fixed by the SYN); asserts, waits at most 2 s. */
int tcp_connect_rcvbuf(uint16_t port, int rcvbuf);
/* Sockets in /proc/net/tcp{,6} that a proxy listening on listen_port and
 * forwarding to up_port still holds open (inode != 0): accepted ones (local
 * port == listen_port, not LISTEN) and upstream ones (remote port == up_port).
 * Unlike /proc/PID/fd this also sees io_uring direct descriptors. */
int proxy_sock_count(uint16_t listen_port, uint16_t up_port);
/* The same, counting only sockets in pid's fd table: other tests running in parallel can hold
 * sockets to the same port numbers (a "free" port another test expects to refuse, which our
 * backend listens on meanwhile), which the plain count cannot tell from the proxy's. */
int proxy_sock_count_pid(pid_t pid, uint16_t listen_port, uint16_t up_port);
/* IPv4 sockets (inode != 0) in /proc/net/tcp with remote port rport in TCP state state (0:
 * any state but LISTEN): on loopback, connections to a listener on rport. */
int tcp4_socks_to(uint16_t rport, unsigned int state);
#define TCP4_SYN_SENT 0x02
/* true if /proc/net/tcp holds a listener on port. */
bool tcp4_listening(uint16_t port);
/* " 3=socket:[1234](ESTABLISHED 8080→41000) 4=anon_inode:[io_uring] ..." */
void describe_fds(pid_t pid, char *buf, size_t len);
/* Kernel-queued bytes (tx_queue + rx_queue) of every socket touching port. */
uint64_t kernel_queued(uint16_t port);

enum io_end {
	IO_DONE,     /* the requested amount was transferred */
	IO_EOF,      /* peer closed (read returned 0) */
	IO_RESET,    /* ECONNRESET / EPIPE */
	IO_TIMEOUT,
	IO_ERROR,    /* another errno */
};
const char *io_end_name(enum io_end e);

/* Bounded I/O on non-blocking sockets; *done gets the bytes moved. */
enum io_end io_write_all(int fd, const void *buf, size_t n, int timeout_ms, size_t *done);
enum io_end io_read_exact(int fd, void *buf, size_t n, int timeout_ms, size_t *done);
/* Writes bytes [off, off + len) of stream seed. */
enum io_end io_write_stream(int fd, uint64_t seed, uint64_t off, uint64_t len,
			    int timeout_ms, uint64_t *done);
/* Reads into c until max bytes (IO_DONE), EOF, error or timeout. */
enum io_end io_read_stream(int fd, struct stream_check *c, uint64_t max, int timeout_ms);
/* Waits for EOF or reset, discarding (and counting in *extra) any data. */
enum io_end io_wait_close(int fd, int timeout_ms, uint64_t *extra);

/* Full-duplex transfer on one socket in one poll loop: sends send_len bytes of
 * stream send_seed (then shutdown(SHUT_WR) if shut_wr), while checking what
 * arrives against stream recv_seed, until EOF/error/timeout. */
struct xfer {
	uint64_t sent;
	enum io_end send_end;
	struct stream_check rx;
	enum io_end recv_end;
	uint64_t ms;
};
void xfer_run(struct xfer *x, int fd, uint64_t send_seed, uint64_t send_len, bool shut_wr,
	      uint64_t recv_seed, int timeout_ms);
/* Round trip of n bytes of stream seed through an echo path; true if intact. */
bool echo_roundtrip(int fd, uint64_t seed, size_t n, int timeout_ms);

/* ---- processes ------------------------------------------------------------- */

struct proc {
	pid_t pid;
	int out_fd;      /* memfd holding stdout */
	int err_fd;      /* memfd holding stderr */
	bool reaped;
	int status;      /* wait status once reaped */
};

const char *uproxy_bin(void);
/* The backend the uproxy under test runs on: "epoll" when UPROXY_TEST_BACKEND=epoll (then every
 * uproxy spawned gets --backend epoll), else "io_uring". Tests of io_uring-only figures skip
 * themselves on epoll. */
const char *test_backend(void);
/* Spawns argv (argv[0] is the program); hard > 0 sets RLIMIT_NOFILE in the
 * child to {soft, hard} (soft 0 means hard). Returns 0 or -errno. */
int proc_spawn(struct proc *p, char *const argv[], long soft, long hard);
/* true once the process has exited (status in p->status), within timeout. */
bool proc_wait(struct proc *p, int timeout_ms);
/* SIGKILL (our own child only) if still running, and reap. */
void proc_kill(struct proc *p);
/* Captured output, NUL-terminated, malloc'd. */
char *proc_stdout(struct proc *p);
char *proc_stderr(struct proc *p);
void proc_release(struct proc *p);
/* "exited 2", "killed by signal 9", "still running" */
const char *status_str(const struct proc *p, char *buf, size_t len);

/* Runs uproxy with the NULL-terminated args, waits up to timeout_ms. */
struct run_result {
	bool exited;
	int code;        /* exit code if exited normally, -signal if killed */
	uint64_t ms;
	char *out;
	char *err;
};
void run_uproxy(struct run_result *r, int timeout_ms, const char *const args[]);
void run_result_free(struct run_result *r);

/* ---- the proxy under test ------------------------------------------------ */

struct proxy_cfg {
	const char *listen;       /* NULL: "127.0.0.1:<port>" on a free port */
	const char *upstream;     /* NULL: "127.0.0.1:<up_port>" */
	uint16_t port;            /* listen port when listen is given */
	uint16_t up_port;
	int probe_family;         /* family used for the readiness probe (AF_INET if 0) */
	long nofile;              /* RLIMIT_NOFILE (hard) for the proxy, 0 = inherit */
	long nofile_soft;         /* its soft limit, 0 = same as nofile */
	const char *extra[12];    /* more arguments, NULL-terminated */
};

struct proxy {
	struct proc proc;
	uint16_t port;
	uint16_t up_port;
	int family;
	int base_fds;             /* /proc/PID/fd count once idle after start-up */
	long base_rss_kib;
};

/* Starts the proxy and waits (≤ 2 s) until it accepts; asserts on failure.
 * The readiness probe goes through the proxy, so keep the backend bound but
 * not listening (backend_bind) until this returns. */
void proxy_start(struct proxy *px, const struct proxy_cfg *cfg);
/* SIGTERM, wait ≤ 2 s, SIGKILL as a last resort; returns true if it exited
 * by itself with status 0 (else logs its status and stderr). Its captured
 * output stays readable (proc_stderr) until the test ends. */
bool proxy_stop(struct proxy *px);
int proxy_fds(const struct proxy *px);
/* Waits ≤ timeout_ms for fds == base and no proxy-owned sockets; returns
 * true on success, with the last counts in *fds and *socks. */
bool proxy_wait_idle(const struct proxy *px, int timeout_ms, int *fds, int *socks);
bool proxy_is_sanitized(const struct proxy *px);
char *proxy_stderr(struct proxy *px);
/* Waits ≤ timeout_ms for needle in the proxy's stderr at or after offset from; returns its
 * offset, or -1. */
long proxy_wait_log(struct proxy *px, const char *needle, long from, int timeout_ms);
/* How many times needle is in the proxy's stderr so far. */
int proxy_log_count(struct proxy *px, const char *needle);

int count_fds(pid_t pid);
/* Soft "Max open files" from /proc/PID/limits, -1 if unknown. */
long nofile_soft_of(pid_t pid);
long rss_kib(pid_t pid);
/* "Threads:" from /proc/PID/status, -1 if unknown. */
int thread_count(pid_t pid);
long cpu_ticks(pid_t pid);
/* Soft RLIMIT_NOFILE := hard. */
void raise_nofile(void);

/* ---- backends ---------------------------------------------------------------- */

enum backend_mode {
	BK_ECHO,     /* echo everything; close after the peer's EOF is echoed */
	BK_SINK,     /* read to EOF, record length and hash, close */
	BK_SOURCE,   /* send source_len bytes of source_seed, then close */
	BK_HANDLER,  /* run handler(fd, arg) in its own thread per connection */
};

#define BK_MAX_RESULTS 64
#define BK_MAX_HANDLERS 256

struct sink_result {
	uint64_t len;
	uint64_t hash;
};

struct backend {
	int lfd;
	uint16_t port;
	int family;
	enum backend_mode mode;
	uint64_t source_seed, source_len;
	void (*handler)(int fd, void *arg);
	void *arg;

	pthread_t thr;
	bool running;
	int stop_efd;
	atomic_bool stopping;

	atomic_int accepted;
	atomic_int open;
	atomic_int peak_open;
	atomic_ullong bytes_in;

	pthread_mutex_t mu;
	int nresults;
	struct sink_result results[BK_MAX_RESULTS];
	int nhandlers;
	pthread_t handlers[BK_MAX_HANDLERS];
};

/* Binds a loopback port (family AF_INET or AF_INET6) without listening:
 * connections to it are refused until backend_run. Asserts on failure. */
void backend_bind(struct backend *b, int family);
/* backend_bind on 127.0.0.1:port with SO_REUSEADDR, so a stopped backend can bind its port
 * again while its old connections linger in TIME_WAIT (every socket on it must set it). */
void backend_bind_on(struct backend *b, uint16_t port);
/* Makes b a backend of lfd, a bound socket that is not listening yet (family and port read
 * from it): for a socket bound elsewhere, such as in another network namespace. */
void backend_adopt(struct backend *b, int lfd);
void backend_run(struct backend *b, enum backend_mode mode);
void backend_stop(struct backend *b);
/* Waits for a sink result with len > 0. */
bool backend_wait_sink(struct backend *b, int timeout_ms, struct sink_result *out);

/* Common set-up: backend bound, proxy started on it (extra arguments are
 * NULL-terminated, may be NULL), backend running in mode. */
void setup(struct backend *b, struct proxy *px, enum backend_mode mode,
	   const char *const extra[]);
#define setup_echo(b, px, extra) setup((b), (px), BK_ECHO, (extra))

/* Asserts that within timeout_ms the proxy is back to its baseline fd count
 * and holds no sockets for its ports; what names the situation. */
void assert_proxy_idle(const struct proxy *px, int timeout_ms, const char *what);

/* ---- many connections at once ------------------------------------------- */

/* n echo connections driven by one poll loop. Each sends len bytes of stream
 * seed_base + i, then shutdown(SHUT_WR), and checks the echo up to EOF. With
 * warm > 0 every connection first completes a warm-byte round trip, so all n
 * are open through the proxy at the same time before the bulk is sent. */
struct multi_stats {
	int n, ok, connect_failed, corrupt, short_eof, reset, timeout;
	int warm_ok;
	uint64_t ms;
	char first_problem[192];
};
void multi_echo(struct multi_stats *st, int n, int family, uint16_t port, uint64_t len,
		uint64_t warm, uint64_t seed_base, int timeout_ms);

/* ---- config files --------------------------------------------------------------- */

/* conf_dir_make makes a fresh private directory (its name in dir) for a test's config file;
 * conf_dir_remove (the test's .fini) removes it and every file in it (uproxy.conf{,.tmp},
 * access logs, unix sockets), passed or not. */
void conf_dir_make(char *dir, size_t len);
void conf_dir_remove(void);
/* Writes path aside and renames it into place: a reader never sees half a file. */
void file_write_atomic(const char *path, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The 1-based number of the first line of text holding needle; asserts there is one. Config
 * tests use it to name the line an error must point at without counting by hand. */
int text_line_of(const char *text, const char *needle);
/* true if text names "path:line" (not followed by another digit): an error that points at
 * that line of the file. */
bool text_names_line(const char *text, const char *path, int line);
/* Printable rendering of n bytes at p for failure messages (\xNN for the rest); the result
 * stays valid for the next three calls. */
const char *bytes_show(const void *p, size_t n);

/* Spawns uproxy with args (NULL-terminated; they name the ports, usually through --config) and
 * waits ≤ 3 s until every one of ports[0..n) listens on 127.0.0.1, without connecting (no
 * session is made, so every counter starts at 0). Sets px->port = ports[0] and takes the fd
 * baseline. Returns false when it exited 1 (a port was taken meanwhile: pick others and retry);
 * asserts on any other failure. */
bool proxy_spawn_ports(struct proxy *px, const char *const args[], const uint16_t ports[], int n);
/* Writes a config file for a proxy that will listen on port, before it starts. */
typedef void proxy_conf_fn(uint16_t port, void *arg);
/* Starts uproxy [--listen host:<free port>] args... (NULL-terminated) and waits (≤ 3 s) until
 * it listens, without connecting to it: no readiness session reaches an upstream or a counter.
 * With host NULL, conf(port, arg) writes a config file naming the port instead. Tries other
 * ports while one is taken meanwhile (exit 1); asserts on any other failure. up_port is the
 * port assert_proxy_idle watches. */
void proxy_spawn_listen(struct proxy *px, const char *host, uint16_t up_port,
			const char *const args[], proxy_conf_fn *conf, void *arg);

/* ---- a listener that never answers ------------------------------------------ */

/* A loopback listener whose accept queue is full: its SYNs are dropped, so a connect to it
 * neither succeeds nor fails until the connector's own timeout. blackhole_open asserts that a
 * plain connect to it times out (500 ms). */
#define BLACKHOLE_FILL 4
struct blackhole {
	int lfd;
	int fill[BLACKHOLE_FILL];
	uint16_t port;
};
void blackhole_open(struct blackhole *h);
void blackhole_close(struct blackhole *h);

/* ---- the /metrics endpoint (--stats) ----------------------------------------- */

struct http_resp {
	int status;
	char *raw;        /* the whole response, NUL-terminated */
	size_t len;
	const char *body; /* inside raw */
	size_t body_len;
};

/* Sends req to 127.0.0.1:port and reads to EOF (at most 1 MiB, at most timeout_ms). Returns
 * false, with why, when the connection failed or was closed without an answer; asserts on a
 * malformed answer (status line, end of head, Content-Length == body). */
bool http_req(uint16_t port, const char *req, int timeout_ms, struct http_resp *r, char *why,
	      size_t wlen);
void http_free(struct http_resp *r);

#define METRICS_REQ "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
#define MSET_MAX 512

/* One scrape's samples: "name{labels}" -> value. Large: keep it static or on the heap. */
struct mset {
	int n;
	struct {
		char key[192];
		double v;
	} s[MSET_MAX];
};

/* A successful scrape of 127.0.0.1:port/metrics (≤ 3 s): 200, the exposition content type,
 * every sample parsed into m; asserts. */
void metrics_scrape(uint16_t port, struct mset *m);
/* Parses an exposition body strictly; asserts. */
void metrics_parse(const char *body, struct mset *m);
/* The value of sample key, false if there is none. */
bool metrics_get(const struct mset *m, const char *key, double *v);
/* The value of sample key; asserts it is there. */
double metrics_val(const struct mset *m, const char *key);
/* metrics_val(b, key) - metrics_val(a, key). */
double metrics_delta(const struct mset *a, const struct mset *b, const char *key);
/* Scrapes 127.0.0.1:port until sample key == want (≤ timeout_ms: the workers publish their
 * counters periodically) and asserts it; a missing key is a failure too. what (may be NULL)
 * names the moment in the message. */
void metrics_wait(uint16_t port, const char *key, double want, int timeout_ms, const char *what);
/* The sum of the samples of metric name (exactly that name, no suffix) whose labels include
 * every one of the NULL-terminated labels (each 'key="value"'), in any order; returns how
 * many samples matched. */
int metrics_sum(const struct mset *m, const char *name, const char *const labels[],
		double *sum);

/* ---- access-log files -------------------------------------------------------- */

/* alog_make (a suite's or test's .init) makes a private directory and sets alog_path to a file
 * in it for --access-log; alog_remove (its .fini) removes both, passed or not. */
extern char alog_path[128];
void alog_make(void);
void alog_remove(void);
/* The whole file (at most 1 MiB, "" if it cannot be opened), malloc'd; *len its length. */
char *file_read_all(const char *path, size_t *len);
int count_lines(const char *s);
/* Waits (≤ timeout_ms) until path holds at least want whole lines after offset off; returns
 * the text after off (malloc'd), whatever it holds by then. */
char *alog_wait_lines(const char *path, size_t off, int want, int timeout_ms);
/* Copies the one line of tail holding needle into out; asserts there is exactly one. */
void alog_find_line(const char *tail, const char *needle, char *out, size_t len);
/* Waits ≤ timeout_ms for the whole line of alog_path for the client on 127.0.0.1:client_port
 * and copies it (without its newline) into out; asserts. */
void alog_wait_client(uint16_t client_port, int timeout_ms, char *out, size_t len);
/* Waits ≤ timeout_ms for the first whole line of alog_path holding needle and copies it
 * (without its newline) into out; asserts. */
void alog_wait_line(const char *needle, int timeout_ms, char *out, size_t len);

#endif
