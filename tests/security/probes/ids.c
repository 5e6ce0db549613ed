/* Prints what a process got on execve: its uids, gids and capability sets, and whether
 * it can become root. Bound in setuid root or with file capabilities, it shows whether
 * either elevated it: {"ruid":..,"euid":..,"suid":..,"egid":..,"capeff":"...","setuid0":errno}. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    uid_t r, e, s;
    gid_t rg, eg, sg;
    getresuid(&r, &e, &s);
    getresgid(&rg, &eg, &sg);
    char capeff[64] = "?", capprm[64] = "?", nnp[16] = "?", line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "CapEff:\t", 8))
            snprintf(capeff, sizeof capeff, "%.60s", line + 8);
        if (!strncmp(line, "CapPrm:\t", 8))
            snprintf(capprm, sizeof capprm, "%.60s", line + 8);
        if (!strncmp(line, "NoNewPrivs:\t", 12))
            snprintf(nnp, sizeof nnp, "%.12s", line + 12);
    }
    if (f)
        fclose(f);
    int setuid0 = setuid(0) == 0 ? 0 : errno;
    printf("{\"ruid\": %u, \"euid\": %u, \"suid\": %u, \"rgid\": %u, \"egid\": %u, \"sgid\": %u, "
           "\"capeff\": \"%s\", \"capprm\": \"%s\", \"nnp\": \"%s\", \"setuid0\": %d}\n",
           r, e, s, rg, eg, sg, capeff, capprm, nnp, setuid0);
    return 0;
}
