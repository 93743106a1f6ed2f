// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Receiver
/// @notice Target for cross-chain flows: a flow sees an event on chain A and calls
/// mirror() on chain B. Stores the last call so tests can read it back without logs.
contract Receiver {
    struct Mirror {
        bytes32 sourceTxHash;
        address from;
        address to;
        uint256 value;
        address caller;
    }

    Mirror public last;
    uint256 public mirrorCount;
    uint256 public pingCount;
    string public lastMessage;

    event Mirrored(bytes32 indexed sourceTxHash, address indexed from, address to, uint256 value, address caller);
    event Pinged(address indexed caller, string message);

    function mirror(bytes32 sourceTxHash, address from, address to, uint256 value) external {
        last = Mirror(sourceTxHash, from, to, value, msg.sender);
        mirrorCount += 1;
        emit Mirrored(sourceTxHash, from, to, value, msg.sender);
    }

    function ping(string calldata message) external {
        lastMessage = message;
        pingCount += 1;
        emit Pinged(msg.sender, message);
    }
}
