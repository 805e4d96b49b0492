/* log: leveled diagnostic lines on stderr, one write(2) per line, with a UTC timestamp.
 * Never used for per-byte work; per-connection messages go through a rate limiter. */
#ifndef UPROXY_LOG_H
#define UPROXY_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern enum log_level log_threshold;

void log_set_level(enum log_level level);
const char *log_level_name(enum log_level level);
/* Parses "error|warn|info|debug"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline bool log_enabled(enum log_level level)
{
	return level <= log_threshold;
}

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)                                                                              \
	do {                                                                                       \
		if (log_enabled(LOG_WARN))                                                         \
			log_msg(LOG_WARN, __VA_ARGS__);                                            \
	} while (0)
#define log_info(...)                                                                              \
	do {                                                                                       \
		if (log_enabled(LOG_INFO))                                                         \
			log_msg(LOG_INFO, __VA_ARGS__);                                            \
	} while (0)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_DEBUG))                                                        \
			log_msg(LOG_DEBUG, __VA_ARGS__);                                           \
	} while (0)

/* At most LOG_RATELIMIT_BURST lines per second per limiter; the rest are counted and the count
 * is reported with the next line that gets through. */
#define LOG_RATELIMIT_BURST 5

struct log_ratelimit {
	uint64_t window_start_ms;
	unsigned int printed;
	unsigned long suppressed;
};

/* True if a line may be printed now; *suppressed gets the number dropped since the last one. */
bool log_ratelimit_ok(struct log_ratelimit *rl, unsigned long *suppressed);

#endif
