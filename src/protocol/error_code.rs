//! The error table of PROTOCOL.md §4.

/// An error code sent in an `ERROR` frame. The numbers are part of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    MalformedFrame = 1,
    UnknownOpcode = 2,
    FrameTooLarge = 3,
    UnsupportedVersion = 4,
    HelloRequired = 5,
    NotAuthenticated = 6,
    InvalidState = 7,
    ServerFull = 8,
    IdleTimeout = 9,
    InvalidUsername = 10,
    UsernameTaken = 11,
    WeakCredentials = 12,
    AuthFailed = 13,
    TooManyAttempts = 14,
    UserNotFound = 15,
    AlreadyFriends = 16,
    RequestPending = 17,
    NoSuchRequest = 18,
    NotFriends = 19,
    InvalidBody = 20,
    Forbidden = 21,
    AlreadyMember = 22,
    InvalidArgument = 23,
    StoreUnavailable = 24,
    ShuttingDown = 25,
    SlowReader = 26,
    RateLimited = 27,
    RecipientQueueFull = 28,
    TooManySessions = 29,
    LoginTimeout = 30,
    TooManyDevices = 31,
    NoSuchDevice = 32,
    FrameTimeout = 33,
    TooManyGroups = 34,
    GroupFull = 35,
    TooManyRequests = 36,
    TooManyFriends = 37,
    LoginThrottled = 38,
    AccountDisabled = 39,
    CredentialsChanged = 40,
    AccountDeleted = 41,
}

impl ErrorCode {
    /// Every code, in wire order (numbers may skip: a gap is a code reserved elsewhere).
    pub const ALL: [ErrorCode; 41] = {
        use ErrorCode::*;
        [
            MalformedFrame,
            UnknownOpcode,
            FrameTooLarge,
            UnsupportedVersion,
            HelloRequired,
            NotAuthenticated,
            InvalidState,
            ServerFull,
            IdleTimeout,
            InvalidUsername,
            UsernameTaken,
            WeakCredentials,
            AuthFailed,
            TooManyAttempts,
            UserNotFound,
            AlreadyFriends,
            RequestPending,
            NoSuchRequest,
            NotFriends,
            InvalidBody,
            Forbidden,
            AlreadyMember,
            InvalidArgument,
            StoreUnavailable,
            ShuttingDown,
            SlowReader,
            RateLimited,
            RecipientQueueFull,
            TooManySessions,
            LoginTimeout,
            TooManyDevices,
            NoSuchDevice,
            FrameTimeout,
            TooManyGroups,
            GroupFull,
            TooManyRequests,
            TooManyFriends,
            LoginThrottled,
            AccountDisabled,
            CredentialsChanged,
            AccountDeleted,
        ]
    };

    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code with this number, if the table has one.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn the_table_is_in_order_and_round_trips() {
        for pair in ErrorCode::ALL.windows(2) {
            assert!(pair[0].code() < pair[1].code(), "{pair:?}");
        }
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::ALL[0].code(), 1);
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(u16::MAX), None);
    }
}
