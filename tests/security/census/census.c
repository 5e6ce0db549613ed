/* Syscall census: try every syscall number FIRST..LAST once, each in its own child
 * process, with harmless arguments, and print one line per number:
 *   NR ret VALUE          the call returned VALUE >= 0
 *   NR errno E            it failed with errno E
 *   NR exit CODE          the child ended without returning (exit, exit_group)
 *   NR signal SIG         the child was killed (pause -> SIGALRM, rt_sigreturn -> SIGSEGV, SIGSYS)
 * The arguments are all -1 (an invalid fd, pointer, size or flag set, which the kernel
 * rejects early) except where the policy allows a syscall with some arguments only:
 * clone (a plain fork), socket and socketpair (AF_UNIX), so that they can reach the kernel.
 * A child that forks returns 0 in its own child, which exits at once. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static void try_one(long nr) {
    pid_t self = getpid();
    struct itimerval t = {{0, 0}, {0, 300000}}; /* a blocking call (pause) ends by SIGALRM */
    setitimer(ITIMER_REAL, &t, NULL);
    long a = -1, r;
    if (nr == SYS_clone)
        r = syscall(nr, (long)SIGCHLD, 0L, 0L, 0L, 0L, 0L);
    else if (nr == SYS_socket)
        r = syscall(nr, (long)AF_UNIX, (long)SOCK_STREAM, 0L, a, a, a);
    else if (nr == SYS_socketpair)
        r = syscall(nr, (long)AF_UNIX, (long)SOCK_STREAM, 0L, a, a, a);
    else
        r = syscall(nr, a, a, a, a, a, a);
    int err = errno;
    if (getpid() != self)
        _exit(0); /* the child of fork, vfork or clone */
    char line[64];
    int n = r < 0 ? snprintf(line, sizeof line, "%ld errno %d\n", nr, err)
                  : snprintf(line, sizeof line, "%ld ret %ld\n", nr, r);
    if (write(1, line, n) != n)
        _exit(3);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    long first = atol(argv[1]), last = atol(argv[2]);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (long nr = first; nr <= last; nr++) {
        int pipefd[2];
        if (pipe(pipefd) != 0)
            return 4;
        pid_t pid = fork();
        if (pid < 0)
            return 5;
        if (pid == 0) {
            close(pipefd[0]);
            dup2(pipefd[1], 1);
            try_one(nr);
        }
        close(pipefd[1]);
        char buf[64] = {0};
        ssize_t got = read(pipefd[0], buf, sizeof buf - 1);
        close(pipefd[0]);
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        if (got > 0)
            fputs(buf, stdout);
        else if (WIFSIGNALED(status))
            printf("%ld signal %d\n", nr, WTERMSIG(status));
        else
            printf("%ld exit %d\n", nr, WEXITSTATUS(status));
    }
    return 0;
}
