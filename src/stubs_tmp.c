/* TEMPORARY weak stand-ins until the sni branch is merged. */
#include <stdbool.h>
#include <string.h>

#include "uproxy/config.h"
#include "uproxy/sni.h"

__attribute__((weak)) int sni_pattern_check(const char *p, const char **why)
{
	(void)p;
	(void)why;
	return 0;
}

__attribute__((weak)) enum sni_result sni_parse(const uint8_t *b, size_t l, char *n, size_t nl)
{
	(void)b;
	(void)l;
	(void)n;
	(void)nl;
	return SNI_NOT_TLS;
}

__attribute__((weak)) const char *sni_result_name(enum sni_result r)
{
	(void)r;
	return "?";
}

__attribute__((weak)) int sni_route_match(const struct config_sni_route *r, uint32_t n,
					  const char *name)
{
	(void)r;
	(void)n;
	(void)name;
	return -1;
}
