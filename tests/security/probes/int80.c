/* i386 system calls from a 64-bit process: `int $0x80` enters the kernel's compat (ia32)
 * entry point, where syscall numbers are i386's. A filter that checked numbers without
 * checking the architecture would read i386's 26 (ptrace) as x86_64's msync, or i386's
 * 21 (mount) as x86_64's access, and let them through.
 *
 *   int80 NR [ARG1 ARG2 ARG3]   prints "before", makes the call, prints its return value.
 *
 * A filter that kills other ABIs ends the process between the two lines (SIGSYS). */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    long nr = strtol(argv[1], NULL, 0);
    long a1 = argc > 2 ? strtol(argv[2], NULL, 0) : 0;
    long a2 = argc > 3 ? strtol(argv[3], NULL, 0) : 0;
    long a3 = argc > 4 ? strtol(argv[4], NULL, 0) : 0;
    printf("before\n");
    fflush(stdout);
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a1), "c"(a2), "d"(a3)
                     : "memory", "r8", "r9", "r10", "r11");
    printf("%ld\n", ret);
    return 0;
}
