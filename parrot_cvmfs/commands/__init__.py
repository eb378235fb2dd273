"""The commands of `parrot_cvmfs` (cli.py parses the command line and runs them): one
module a family, with the options and the output they share."""

EXIT_ERROR = 1
EXIT_USAGE = 2
